"""Dagster job of the launcher benchmarks: the same 1-op job as ``runcore_launch_jobs.single``.

``dagster job execute -f dagster_launch_jobs.py -j single`` and the workspace of the
DefaultRunLauncher case load this file, so it imports nothing but Dagster's public API.
"""

from __future__ import annotations

from dagster import Definitions, job, op


@op
def op_0() -> int:
    """Return 1."""
    return 1


@job
def single() -> None:
    """One op."""
    op_0()


defs = Definitions(jobs=[single])
