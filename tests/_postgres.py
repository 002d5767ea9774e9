"""A fresh PostgreSQL schema per test, on the server ``$RUNCORE_TEST_POSTGRES_URL`` names.

Default ``postgresql://postgres@127.0.0.1:5432/test``. Where the server is unreachable the
tests are skipped, except on CI (``CI=true``), where a skip would hide them: there they fail.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

URL = os.environ.get("RUNCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

if os.environ.get("CI") == "true":
    import psycopg  # on CI the extra must be installed: an ImportError fails the run
else:
    psycopg = pytest.importorskip("psycopg")


def _reachable() -> str | None:
    """None if the server answers, else why not."""
    try:
        with psycopg.connect(URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


_PROBLEM: list[str | None] = []


def require_postgres() -> None:
    """Skip (fail on CI) when the test server is unreachable."""
    if not _PROBLEM:
        _PROBLEM.append(_reachable())
    problem = _PROBLEM[0]
    if problem is None:
        return
    message = f"PostgreSQL at {URL} is unreachable: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (on CI the PostgreSQL tests must run: .ci/run starts the server)")
    pytest.skip(message)


def drop_schema(schema: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """The name of a new, empty schema (created on first use by the storage), dropped after."""
    require_postgres()
    schema = f"rc_test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        drop_schema(schema)


def new_cluster() -> Any:
    """A new, unstarted test-owned PostgreSQL cluster (``benchmarks/_pgcluster.py``: initdb
    into a temporary directory, pg_ctl on a free port of 127.0.0.1), for tests that stop and
    restart the server, never the shared one. Skipped where it cannot be made (no server
    binaries; root without runuser), except on CI, where that fails."""
    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import _pgcluster
    finally:
        sys.path.remove(bench)
    problem = _pgcluster.missing()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a test-owned PostgreSQL cluster cannot be made on CI: {problem}")
        pytest.skip(problem)
    return _pgcluster.TestCluster(max_connections=50, prefix="runcore-test-pg-")
