"""runcore jobs of the launcher benchmarks: the code location ``runcore_launch_jobs:defs``.

Worker processes and the code server import this module by name, so it imports nothing but
runcore: a cold worker's start-up is the interpreter, runcore and this file.

* ``single``: one op, ``op_0``, returning 1 (the shape of ``runcore_jobs.single_job``).
* ``sleepy``: one op that waits for a cancel (up to the run's ``nap`` tag, 60 s by default).
"""

from __future__ import annotations

import runcore as rc

LOCATION = "runcore_launch_jobs:defs"


@rc.op
def op_0() -> int:
    """Return 1."""
    return 1


@rc.op
def nap(context: rc.OpContext) -> bool:
    """Wait for a cancel, up to the run's ``nap`` tag in seconds; True if canceled."""
    return context.wait_for_cancel(float(context.tags.get("nap", "60")))


single = rc.job("single", [op_0])
sleepy = rc.job("sleepy", [nap])
defs = rc.Definitions(jobs=[single, sleepy])
