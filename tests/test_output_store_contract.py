"""The public output store contract suite, run against every output store runcore ships."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import runcore as rc
from runcore.testing import OutputStoreContract


class TestInMemoryOutputStore(OutputStoreContract):
    @pytest.fixture
    def output_store(self) -> rc.OutputStore:
        return rc.InMemoryOutputStore()


class TestFileOutputStore(OutputStoreContract):
    @pytest.fixture
    def output_store(self, tmp_path: Path) -> rc.OutputStore:
        return rc.FileOutputStore(tmp_path / "outputs")

    @pytest.fixture
    def output_store_factory(self, tmp_path: Path) -> Callable[[], rc.OutputStore]:
        """Another store on the same directory, as another process opens it."""
        return lambda: rc.FileOutputStore(tmp_path / "outputs")


def _put_in_child(base_dir: str, run_id: str) -> None:  # pragma: no cover - a child process
    rc.FileOutputStore(base_dir).put(run_id, "from_child", {"rows": [1, 2, 3]})


def test_a_file_output_put_by_another_process_is_seen(tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    child = multiprocessing.get_context("spawn").Process(
        target=_put_in_child, args=(str(tmp_path / "outputs"), run_id)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    store = rc.FileOutputStore(tmp_path / "outputs")
    assert store.get(run_id, "from_child") == {"rows": [1, 2, 3]}
