"""Shared fixtures for runcore's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import runcore as rc


@pytest.fixture
def sqlite_instance(tmp_path: Path) -> Iterator[rc.Instance]:
    """An instance on a fresh SQLite file, closed after the test."""
    inst = rc.Instance.from_config({"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}})
    with inst:
        yield inst
