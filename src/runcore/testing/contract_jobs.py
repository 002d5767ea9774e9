"""Jobs the launcher contract suite runs. Importable, so worker processes can load them.

They coordinate with the test through files (named by run tags), which works across threads,
processes and hosts alike:

* ``gated``: writes the file named by tag ``started`` as it begins, then waits until the
  file named by tag ``gate`` exists (or the run is canceled) and returns the worker's pid.
* ``failing``: raises ``RuntimeError("boom on purpose")``.
* ``pid``: returns the worker's pid at once.
"""

from __future__ import annotations

import os
import time

import runcore as rc


@rc.op
def wait_at_gate(context: rc.OpContext) -> int:
    """Signal the start, then wait for the gate file or a cancel."""
    started = context.tags.get("started")
    if started:
        with open(started, "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))
    gate = context.tags.get("gate", "")
    deadline = time.monotonic() + float(context.tags.get("gate_timeout", "60"))
    while not os.path.exists(gate):
        if context.wait_for_cancel(0.01):
            return -1
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {gate!r} never appeared")
    return os.getpid()


@rc.op
def explode() -> None:
    """Fail on purpose."""
    raise RuntimeError("boom on purpose")


@rc.op
def report_pid() -> int:
    """The worker's pid."""
    return os.getpid()


gated = rc.job("gated", [wait_at_gate])
failing = rc.job("failing", [explode])
pid = rc.job("pid", [report_pid])

defs = rc.Definitions(jobs=[gated, failing, pid])

LOCATION = "runcore.testing.contract_jobs:defs"
