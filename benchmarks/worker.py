"""Run one benchmark case for one implementation in this (fresh) process.

Usage: ``python benchmarks/worker.py {runcore|dagster} CASE 'JSON-PARAMS'``

Prints one line ``BENCH_RESULT {json}`` on stdout: ``{metric: measurement}`` where a
measurement is a dict with at least ``value`` and ``unit``. The parent (``run.py``) starts one
worker per measurement so imports, caches and open databases never leak between them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from _harness import summary_ms

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


def run_case(impl: str, case: str, params: dict[str, Any]) -> dict[str, Any]:
    """Dispatch to the generic import case or to ``bench_<impl>.CASES[case]``."""
    if case == "import":
        return case_import(params)
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
