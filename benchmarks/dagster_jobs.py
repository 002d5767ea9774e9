"""Dagster job definitions used by the benchmarks (imported only in Dagster worker processes).

The shapes mirror ``runcore_jobs.py`` op for op, with the same trivial op bodies:

* ``single``: one op returning a constant.
* ``chain``: ``op_0 -> op_1 -> ... -> op_{n-1}``, each op adding one to its input.
* ``fanout``: one ``source`` op plus ``n - 1`` ``leaf_i`` ops, each taking ``source``'s output.

``fanout_mp_job`` is a module-level function so that Dagster's multiprocess executor can
rebuild the job in its step subprocesses.
"""

from __future__ import annotations

from typing import Any

from dagster import In, JobDefinition, OpDefinition, job, multiprocess_executor, op


def _const_op(name: str) -> OpDefinition:
    """An op with no inputs that returns 1."""

    @op(name=name)
    def _const() -> int:
        return 1

    return _const


def _increment_op(name: str) -> OpDefinition:
    """An op with one ``value`` input that returns ``value + 1``."""

    @op(name=name, ins={"value": In(int)})
    def _increment(value: int) -> int:
        return value + 1

    return _increment


def single_job() -> JobDefinition:
    """A job of one op."""
    only = _const_op("op_0")

    @job(name="single")
    def single() -> None:
        only()

    return single


def chain_job(n_ops: int) -> JobDefinition:
    """A linear chain of ``n_ops`` ops."""
    first = _const_op("op_0")
    rest = [_increment_op(f"op_{i}") for i in range(1, n_ops)]

    @job(name=f"chain_{n_ops}")
    def chain() -> None:
        value = first()
        for step in rest:
            value = step(value)

    return chain


def fanout_job(n_ops: int, executor_def: Any = None) -> JobDefinition:
    """One ``source`` op feeding ``n_ops - 1`` leaf ops (``n_ops`` ops in all)."""
    source = _const_op("source")
    leaves = [_increment_op(f"leaf_{i}") for i in range(1, n_ops)]

    @job(name=f"fanout_{n_ops}", executor_def=executor_def)
    def fanout() -> None:
        value = source()
        for leaf in leaves:
            leaf(value)

    return fanout


def build(shape: str, n_ops: int) -> JobDefinition:
    """The in-process job for a benchmark shape (``single``, ``chain`` or ``fanout``)."""
    if shape == "single":
        return single_job()
    if shape == "chain":
        return chain_job(n_ops)
    if shape == "fanout":
        return fanout_job(n_ops)
    raise ValueError(f"unknown job shape {shape!r}")


def fanout_mp_job(n_ops: int) -> JobDefinition:
    """The fan-out on ``multiprocess_executor`` with ``max_concurrent: 2``.

    Module-level so Dagster can rebuild it in each step subprocess
    (``build_reconstructable_job("dagster_jobs", "fanout_mp_job", (n_ops,))``).
    """
    return fanout_job(n_ops, executor_def=multiprocess_executor.configured({"max_concurrent": 2}))
