"""A well-formed code location: a ``Definitions`` with two jobs, and a bare job."""

from __future__ import annotations

import os

import runcore as rc
from runcore.worker.context import OpContext


@rc.op
def numbers() -> list[int]:
    return [1, 2, 3]


@rc.op
def total(context: OpContext, numbers: list[int]) -> dict[str, int]:
    context.log.info("summing", count=len(numbers))
    return {"total": sum(numbers), "pid": os.getpid()}


@rc.op
def pid_a() -> int:
    return os.getpid()


@rc.op
def pid_b() -> int:
    return os.getpid()


etl = rc.job("etl", [numbers, total], tags={"team": "data"})
pids = rc.job("pids", [pid_a, pid_b])
defs = rc.Definitions(jobs=[etl, pids])

# Not in ``defs``: found by attribute name only.
solo = rc.job("solo", [rc.op(name="one")(lambda: 1)])
