"""Jobs the executor contract suite runs. Importable, so worker processes can load them.

They meet the test through files named by run tags, which works across threads and processes:

* ``diamond``: ``top`` -> (``left``, ``right``) -> ``bottom``; ``bottom`` returns 12.
* ``branches``: ``root`` -> (``explode``, ``sibling``); ``explode`` raises
  ``RuntimeError("boom on purpose")`` and ``after_explode`` depends on it.
* ``gated``: ``wait_at_gate`` writes the file named by tag ``started``, then waits until the
  file named by tag ``gate`` exists (or the run is canceled); ``after_gate`` depends on it.
* ``pooled``: three independent steps in pool :data:`POOL`, each writing its start and end
  times to a file under the directory named by tag ``trace``, and taking :data:`POOLED_SECONDS`.
"""

from __future__ import annotations

import os
import time

import runcore as rc

#: The pool the steps of ``pooled`` use.
POOL = "runcore_contract"
#: How long each step of ``pooled`` runs.
POOLED_SECONDS = 0.15


@rc.op
def top() -> int:
    return 1


@rc.op
def left(top: int) -> int:
    return top + 1


@rc.op
def right(top: int) -> int:
    return top * 10


@rc.op
def bottom(left: int, right: int) -> int:
    return left + right


@rc.op
def root() -> int:
    return 1


@rc.op
def explode(root: int) -> int:
    raise RuntimeError("boom on purpose")


@rc.op
def after_explode(explode: int) -> int:
    return explode


@rc.op
def sibling(root: int) -> int:
    return root + 1


@rc.op
def wait_at_gate(context: rc.OpContext) -> int:
    """Signal the start, then wait for the gate file or a cancel."""
    with open(context.tags["started"], "w", encoding="utf-8") as fh:
        fh.write(str(os.getpid()))
    deadline = time.monotonic() + float(context.tags.get("gate_timeout", "60"))
    while not os.path.exists(context.tags["gate"]):
        if context.wait_for_cancel(0.01):
            return -1
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {context.tags['gate']!r} never appeared")
    return os.getpid()


@rc.op
def after_gate(wait_at_gate: int) -> int:
    return wait_at_gate


def _traced(context: rc.OpContext) -> None:
    start = time.time()
    time.sleep(POOLED_SECONDS)
    path = os.path.join(context.tags["trace"], f"{context.step_key}.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{start} {time.time()}")


@rc.op(pool=POOL)
def pooled_a(context: rc.OpContext) -> None:
    _traced(context)


@rc.op(pool=POOL)
def pooled_b(context: rc.OpContext) -> None:
    _traced(context)


@rc.op(pool=POOL)
def pooled_c(context: rc.OpContext) -> None:
    _traced(context)


diamond = rc.job("diamond", [top, left, right, bottom])
branches = rc.job("branches", [root, explode, after_explode, sibling])
gated = rc.job("gated", [wait_at_gate, after_gate])
pooled = rc.job("pooled", [pooled_a, pooled_b, pooled_c])

defs = rc.Definitions(jobs=[diamond, branches, gated, pooled])

LOCATION = "runcore.testing.executor_jobs:defs"
