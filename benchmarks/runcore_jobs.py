"""runcore job definitions used by the benchmarks (imported only in runcore worker processes).

The shapes mirror ``dagster_jobs.py`` op for op, with the same trivial op bodies:

* ``single``: one op returning a constant.
* ``chain``: ``op_0 -> op_1 -> ... -> op_{n-1}``, each op adding one to its input.
* ``fanout``: one ``source`` op plus ``n - 1`` ``leaf_i`` ops, each taking ``source``'s output.

runcore wires ops by parameter name, so each chain link gets a signature whose one parameter
is named after the op before it.
"""

from __future__ import annotations

import inspect
from typing import Any

import runcore as rc


def _const() -> int:
    return 1


def _leaf(source: int) -> int:
    return source + 1


def _increment_op(name: str, upstream: str) -> Any:
    """An op named ``name`` taking ``upstream``'s output and returning it plus one."""

    def increment(*args: int, **kwargs: int) -> int:
        (value,) = (*args, *kwargs.values())
        return value + 1

    param = inspect.Parameter(upstream, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int)
    increment.__signature__ = inspect.Signature([param], return_annotation=int)  # type: ignore[attr-defined]
    return rc.op(name=name)(increment)


def single_job() -> rc.Job:
    """A job of one op."""
    return rc.job("single", [rc.op(name="op_0")(_const)])


def chain_job(n_ops: int) -> rc.Job:
    """A linear chain of ``n_ops`` ops."""
    ops = [rc.op(name="op_0")(_const)]
    ops += [_increment_op(f"op_{i}", f"op_{i - 1}") for i in range(1, n_ops)]
    return rc.job(f"chain_{n_ops}", ops)


def fanout_ops(n_ops: int) -> list[Any]:
    """One ``source`` op and ``n_ops - 1`` leaves taking its output."""
    return [rc.op(name="source")(_const)] + [
        rc.op(name=f"leaf_{i}")(_leaf) for i in range(1, n_ops)
    ]


def fanout_job(n_ops: int, **job_kwargs: Any) -> rc.Job:
    """One ``source`` op feeding ``n_ops - 1`` leaf ops (``n_ops`` ops in all)."""
    return rc.job(f"fanout_{n_ops}", fanout_ops(n_ops), **job_kwargs)


def fanout_mp_job(n_ops: int) -> rc.Job:
    """The fan-out on ``MultiprocessExecutor(max_concurrent=2)``."""
    return fanout_job(n_ops, executor=rc.MultiprocessExecutor(max_concurrent=2))


def build(shape: str, n_ops: int) -> rc.Job:
    """The job for a benchmark shape (``single``, ``chain`` or ``fanout``)."""
    if shape == "single":
        return single_job()
    if shape == "chain":
        return chain_job(n_ops)
    if shape == "fanout":
        return fanout_job(n_ops)
    raise ValueError(f"unknown job shape {shape!r}")


def queue_jobs(pools: list[str]) -> dict[str | None, rc.Job]:
    """The queued-coordination jobs by the pool they use: ``None`` -> job ``plain``, one op
    ``plain_op`` in no pool; each pool -> job ``pooled_<pool>``, one op ``op_<pool>`` in that
    pool (as in ``dagster_jobs``)."""
    jobs: dict[str | None, rc.Job] = {None: rc.job("plain", [rc.op(name="plain_op")(_const)])}
    for pool in pools:
        jobs[pool] = rc.job(f"pooled_{pool}", [rc.op(name=f"op_{pool}", pool=pool)(_const)])
    return jobs
