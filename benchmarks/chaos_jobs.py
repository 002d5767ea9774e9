"""The code location of ``benchmarks/chaos.py``: small jobs that nap, use a pool, and fail on cue.

Loaded by file path (``.../benchmarks/chaos_jobs.py:defs``) by the submitter, the daemons (to
create retries) and every run worker. Each op sleeps a small random time (10-60 ms) and
returns an int. Ops marked *pool* claim a slot of pool :data:`POOL` (limit 2, set by the
chaos script) at op granularity; ``pair`` has its pool op at the root, so its runs are also
held in the queue while the pool is full.

* ``etl``: ``extract -> transform (pool) -> load`` (3 steps)
* ``pair``: ``fetch (pool) -> store`` (2 steps)
* ``diamond``: ``source -> left, right (pool) -> merge`` (4 steps)
* ``chain5``: ``c1 -> c2 -> c3 (pool) -> c4 -> c5`` (5 steps)

Failures are injected by run tags chosen by the submitter, so they are reproducible from the
chaos seed and are copied onto run retries:

* ``chaos/fail_op``: the op (name) that raises;
* ``chaos/fail_mode``: ``once`` (it raises in the first run only, so the retry succeeds),
  ``always`` (the retry fails too), or ``fatal`` (``Failure(allow_retry=False)``: never
  retried).
"""

from __future__ import annotations

import random
import time

import runcore as rc

#: The pool some ops use (its limit is set by the chaos script).
POOL = "chaos_db"
#: Run tags read by the ops.
FAIL_OP_TAG = "chaos/fail_op"
FAIL_MODE_TAG = "chaos/fail_mode"
FAIL_MODES = ("once", "always", "fatal")


def _work(context: rc.OpContext, value: int) -> int:
    """Nap 10-60 ms, raise if the run's tags say this op fails, else return ``value + 1``."""
    time.sleep(random.uniform(0.01, 0.06))
    if context.tags.get(FAIL_OP_TAG) == context.op_name:
        mode = context.tags.get(FAIL_MODE_TAG, "once")
        retry = int(context.tags.get("runcore/retry_number", "0") or 0)
        if mode == "fatal":
            raise rc.Failure(f"chaos: {context.op_name} fails for good", allow_retry=False)
        if mode == "always" or retry == 0:
            raise RuntimeError(f"chaos: injected failure of {context.op_name} (mode {mode})")
    return value + 1


# --- etl --------------------------------------------------------------------------------------


@rc.op
def extract(context: rc.OpContext) -> int:
    return _work(context, 0)


@rc.op(pool=POOL)
def transform(context: rc.OpContext, extract: int) -> int:
    return _work(context, extract)


@rc.op
def load(context: rc.OpContext, transform: int) -> int:
    return _work(context, transform)


# --- pair -------------------------------------------------------------------------------------


@rc.op(pool=POOL)
def fetch(context: rc.OpContext) -> int:
    return _work(context, 0)


@rc.op
def store(context: rc.OpContext, fetch: int) -> int:
    return _work(context, fetch)


# --- diamond ----------------------------------------------------------------------------------


@rc.op
def source(context: rc.OpContext) -> int:
    return _work(context, 0)


@rc.op
def left(context: rc.OpContext, source: int) -> int:
    return _work(context, source)


@rc.op(pool=POOL)
def right(context: rc.OpContext, source: int) -> int:
    return _work(context, source)


@rc.op
def merge(context: rc.OpContext, left: int, right: int) -> int:
    return _work(context, left + right)


# --- chain5 -----------------------------------------------------------------------------------


@rc.op
def c1(context: rc.OpContext) -> int:
    return _work(context, 0)


@rc.op
def c2(context: rc.OpContext, c1: int) -> int:
    return _work(context, c1)


@rc.op(pool=POOL)
def c3(context: rc.OpContext, c2: int) -> int:
    return _work(context, c2)


@rc.op
def c4(context: rc.OpContext, c3: int) -> int:
    return _work(context, c3)


@rc.op
def c5(context: rc.OpContext, c4: int) -> int:
    return _work(context, c4)


etl = rc.job("etl", [extract, transform, load])
pair = rc.job("pair", [fetch, store])
diamond = rc.job("diamond", [source, left, right, merge])
chain5 = rc.job("chain5", [c1, c2, c3, c4, c5])

defs = rc.Definitions(jobs=[etl, pair, diamond, chain5])

#: Op names of each job, for the submitter to pick the op that fails.
OPS: dict[str, tuple[str, ...]] = {j.name: j.order for j in (etl, pair, diamond, chain5)}
