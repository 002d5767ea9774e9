"""Dagster job definitions used by the benchmarks (imported only in Dagster worker processes).

The shapes mirror ``runcore_jobs.py`` op for op, with the same trivial op bodies:

* ``single``: one op returning a constant.
* ``chain``: ``op_0 -> op_1 -> ... -> op_{n-1}``, each op adding one to its input.
* ``fanout``: one ``source`` op plus ``n - 1`` ``leaf_i`` ops, each taking ``source``'s output.

``fanout_mp_job`` is a module-level function so that Dagster's multiprocess executor can
rebuild the job in its step subprocesses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import (
    Definitions,
    In,
    JobDefinition,
    OpDefinition,
    job,
    multiprocess_executor,
    op,
)
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._serdes import ConfigurableClass, ConfigurableClassData


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


def queue_jobs(pools: list[str]) -> dict[str | None, JobDefinition]:
    """The queued-coordination jobs by the pool they use: ``None`` -> job ``plain``, one op
    ``plain_op`` in no pool; each pool -> job ``pooled_<pool>``, one op ``op_<pool>`` in that
    pool (mirrors ``runcore_jobs``; op names differ so one code location can hold them all)."""
    jobs: dict[str | None, JobDefinition] = {None: _one_op_job("plain", "plain_op", None)}
    for pool in pools:
        jobs[pool] = _one_op_job(f"pooled_{pool}", f"op_{pool}", pool)
    return jobs


def _one_op_job(name: str, op_name: str, pool: str | None) -> JobDefinition:
    @op(name=op_name, pool=pool)
    def _const() -> int:
        return 1

    @job(name=name)
    def one() -> None:
        _const()

    return one


def queue_definitions() -> Definitions:
    """The queued-coordination jobs as a code location (loaded in-process by the workspace)."""
    from _harness import queue_pool_names

    return Definitions(jobs=list(queue_jobs(queue_pool_names()).values()))


class NoopRunLauncher(RunLauncher, ConfigurableClass):
    """A run launcher that launches nothing: the run stays STARTING (like runcore's
    ``RecordingLauncher``), so a dequeue benchmark measures the daemon, not a launch."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> NoopRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        """Do nothing."""

    def terminate(self, run_id: str) -> bool:
        """Nothing runs, so nothing is terminated."""
        return False
