"""Run one benchmark case for one implementation in this (fresh) process.

Usage: ``python benchmarks/worker.py {runcore|dagster} CASE 'JSON-PARAMS'``

Prints one line ``BENCH_RESULT {json}`` on stdout: ``{metric: measurement}`` where a
measurement is a dict with at least ``value`` and ``unit``. The parent (``run.py``) starts one
worker per measurement so imports, caches and open databases never leak between them.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

from _harness import rate, summary_ms

RESULT_PREFIX = "BENCH_RESULT "


def case_import(params: dict[str, Any]) -> dict[str, Any]:
    """Median wall time of ``python -c "import MODULE"`` (or ``pass``) in fresh processes."""
    module = params.get("module")
    code = f"import {module}" if module else "pass"
    samples = []
    for _ in range(params["reps"]):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append(time.perf_counter() - start)
    return {"time": summary_ms(samples)}


def case_sqlite_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """One-row commits per second of a bare ``sqlite3`` loop in WAL mode, per ``synchronous``.

    Neither library is involved: it shows what this machine's disk allows a single-commit
    writer, with and without an fsync per commit.
    """
    count = params["count"]
    result = {}
    for sync in ("NORMAL", "FULL"):
        with tempfile.TemporaryDirectory() as home:
            conn = sqlite3.connect(f"{home}/bare.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            start = time.perf_counter()
            for i in range(count):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (body) VALUES (?)", (f"event {i}",))
                conn.execute("COMMIT")
            result[sync.lower()] = rate(count, time.perf_counter() - start)
            conn.close()
    return result


def case_postgres_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """One-row commits per second of a bare psycopg loop on the benchmark PostgreSQL server,
    in a fresh schema: what its fsync allows a single-commit writer."""
    import psycopg
    from _harness import postgres_schema, postgres_url

    count = params["count"]
    with (
        postgres_schema() as schema,
        psycopg.connect(postgres_url(), autocommit=True) as conn,
    ):
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".t (id BIGSERIAL PRIMARY KEY, body TEXT)')
        insert = f'INSERT INTO "{schema}".t (body) VALUES (%s)'
        start = time.perf_counter()
        for i in range(count):
            with conn.transaction():
                conn.execute(insert, (f"event {i}",))
        return {"commits": rate(count, time.perf_counter() - start)}


GENERIC_CASES = {
    "import": case_import,
    "sqlite_baseline": case_sqlite_baseline,
    "postgres_baseline": case_postgres_baseline,
}


def run_case(impl: str, case: str, params: dict[str, Any]) -> dict[str, Any]:
    """Dispatch to a library-free case here or to ``bench_<impl>.CASES[case]``."""
    if case in GENERIC_CASES:
        return GENERIC_CASES[case](params)
    if impl == "runcore":
        import bench_runcore as bench
    elif impl == "dagster":
        import bench_dagster as bench  # type: ignore[no-redef]
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    return bench.CASES[case](params)


def main(argv: list[str]) -> None:
    """Parse ``IMPL CASE PARAMS`` and print the result line."""
    if len(argv) != 3:
        raise SystemExit(__doc__)
    impl, case, raw = argv
    result = run_case(impl, case, json.loads(raw))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
