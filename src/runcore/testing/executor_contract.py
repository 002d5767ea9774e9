"""The public contract suite for executors.

Subclass :class:`ExecutorContract` in a pytest module and provide an ``executor`` fixture::

    import pytest
    from runcore.testing import ExecutorContract

    class TestMyExecutor(ExecutorContract):
        @pytest.fixture
        def executor(self):
            return MyExecutor()

Every test executes a run of :mod:`runcore.testing.executor_jobs` with your executor, on real
storage (a SQLite file by default), through :func:`runcore.worker.execution.execute_run` as every
launcher does, and checks what :mod:`runcore.executors.base` asks of an executor:

* each step runs only after all its upstream steps succeeded, exactly once, and its output
  reaches the run's output store;
* every step has an outcome (succeeded, failed or skipped) when ``execute`` returns, and the
  executor leaves the run's status alone;
* a failed step's downstream steps are skipped, never started; independent steps still run;
* once the run's cancel is set no new step starts, the rest are skipped, and ``execute``
  returns with no step still running; the run ends CANCELED;
* steps hold their pool slot while they run (``run_step_here``, or ``try_claim`` for a step
  run elsewhere): never more steps of a pool at once than its limit, whoever holds the other
  slots, and a run canceled while a step waits for a slot ends without starting it;
* one executor serves several runs at once.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runcore.events import EventType
from runcore.executors.base import Executor
from runcore.runs import Run, RunStatus
from runcore.storage.base import InstanceStorage
from runcore.testing import executor_jobs
from runcore.testing.executor_jobs import LOCATION, POOL
from runcore.worker.execution import RunExecution, StepPools, execute_run
from runcore.worker.outputs import InMemoryOutputStore, OutputStore
from runcore.worker.plan import build_plan

#: How long the suite waits for a run, a file or a thread before it fails (seconds).
WAIT = 60.0

_T = EventType
_STEP_ENDS = (_T.STEP_SUCCESS, _T.STEP_FAILURE)


def _until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class _Outcome:
    """What a run executed on a background thread ended as (or raised)."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.execution: RunExecution | None = None
        self.error: BaseException | None = None


class ExecutorContract:
    """Checks that an executor keeps the contract of :mod:`runcore.executors.base`.

    Not collected by itself (no ``Test`` prefix); subclass it as ``class TestX(ExecutorContract)``.

    Fixtures the subclass provides:

    ``executor`` (required)
        The :class:`~runcore.executors.base.Executor` under test. One object serves every run
        of a test, as a job's executor does.

    ``storage`` (optional)
        A started :class:`~runcore.storage.InstanceStorage` the runs are stored in. The
        default is a SQLite file in ``tmp_path``, so an executor whose steps run in other
        processes is checked on storage those could open.

    ``output_store`` (optional)
        The :class:`~runcore.worker.outputs.OutputStore` runs are given. Default: a new
        :class:`~runcore.worker.outputs.InMemoryOutputStore`.

    The jobs are those of :mod:`runcore.testing.executor_jobs` (``LOCATION``), importable, so an
    executor that loads the job in a fresh process can. Every test is bounded by :data:`WAIT`.
    """

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[InstanceStorage]:
        from runcore.storage.sqlite import SqliteStorage

        with SqliteStorage(tmp_path / "executor-contract.db") as storage:
            yield storage

    @pytest.fixture
    def output_store(self) -> OutputStore:
        return InMemoryOutputStore()

    # --- helpers ----------------------------------------------------------------------------

    def _starting(self, storage: InstanceStorage, job_name: str, **tags: str) -> Run:
        run = storage.add_run(Run(job_name=job_name, tags=tags, code_location=LOCATION))
        moved = storage.transition(run.run_id, [RunStatus.NOT_STARTED], RunStatus.STARTING)
        assert moved is not None
        return moved

    def _execute(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        run: Run,
        *,
        cancel: threading.Event | None = None,
        pools: StepPools | None = None,
    ) -> tuple[Run, RunExecution]:
        job = executor_jobs.defs.get_job(run.job_name)
        final, execution = execute_run(
            run,
            job,
            storage=storage,
            output_store=output_store,
            executor=executor,
            cancel=cancel,
            pools=pools,
        )
        assert execution is not None, f"run {run.run_id} did not start: {final.status.value}"
        return final, execution

    def _in_background(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        run: Run,
        **kwargs: object,
    ) -> tuple[threading.Thread, _Outcome]:
        outcome = _Outcome()

        def work() -> None:
            try:
                outcome.run, outcome.execution = self._execute(
                    executor,
                    storage,
                    output_store,
                    run,
                    **kwargs,  # type: ignore[arg-type]
                )
            except BaseException as exc:
                outcome.error = exc

        thread = threading.Thread(target=work, name="executor-contract-run", daemon=True)
        thread.start()
        return thread, outcome

    @staticmethod
    def _join(thread: threading.Thread, outcome: _Outcome) -> tuple[Run, RunExecution]:
        thread.join(timeout=WAIT)
        if thread.is_alive():
            pytest.fail(f"the executor did not return within {WAIT} s")
        if outcome.error is not None:
            raise outcome.error
        assert outcome.run is not None
        assert outcome.execution is not None
        return outcome.run, outcome.execution

    @staticmethod
    def _positions(storage: InstanceStorage, run_id: str) -> dict[tuple[str, EventType], list[int]]:
        """Storage ids of each (step, event type) of a run."""
        positions: dict[tuple[str, EventType], list[int]] = {}
        for record in storage.get_event_records(run_id):
            if record.event.step_key is not None:
                key = (record.event.step_key, record.event.event_type)
                positions.setdefault(key, []).append(record.storage_id)
        return positions

    @staticmethod
    def _started_steps(storage: InstanceStorage, run_id: str) -> list[str]:
        return [
            r.event.step_key or ""
            for r in storage.get_event_records(run_id, event_types=[_T.STEP_START])
        ]

    # --- the contract -----------------------------------------------------------------------

    def test_steps_run_after_their_upstream_steps(
        self, executor: Executor, storage: InstanceStorage, output_store: OutputStore
    ) -> None:
        run = self._starting(storage, "diamond")
        final, execution = self._execute(executor, storage, output_store, run)
        assert final.status is RunStatus.SUCCESS, final.failure_reason
        positions = self._positions(storage, run.run_id)
        for step in execution.plan.steps:
            starts = positions.get((step.key, _T.STEP_START), [])
            successes = positions.get((step.key, _T.STEP_SUCCESS), [])
            assert len(starts) == 1, f"step {step.key!r} started {len(starts)} times"
            assert len(successes) == 1, f"step {step.key!r} succeeded {len(successes)} times"
            for upstream in step.upstream:
                (upstream_done,) = positions[(upstream, _T.STEP_SUCCESS)]
                assert upstream_done < starts[0], (
                    f"step {step.key!r} started before its upstream step {upstream!r} succeeded"
                )
        assert execution.output_store.get(run.run_id, "bottom") == 12
        assert output_store.get(run.run_id, "bottom") == 12

    def test_every_step_has_an_outcome_and_the_run_status_is_left_alone(
        self, executor: Executor, storage: InstanceStorage, output_store: OutputStore
    ) -> None:
        run = self._starting(storage, "diamond")
        started = storage.transition(run.run_id, [RunStatus.STARTING], RunStatus.STARTED)
        assert started is not None
        job = executor_jobs.defs.get_job(run.job_name)
        execution = RunExecution(
            run=started,
            plan=build_plan(job),
            storage=storage,
            output_store=output_store,
        )
        executor.execute(execution)
        assert execution.succeeded == set(execution.plan.step_keys)
        assert not execution.failed
        assert not execution.skipped
        current = storage.get_run(run.run_id)
        assert current is not None
        assert current.status is RunStatus.STARTED, "an executor must not change the run's status"

    def test_a_failure_skips_its_downstream_steps_only(
        self, executor: Executor, storage: InstanceStorage, output_store: OutputStore
    ) -> None:
        run = self._starting(storage, "branches")
        final, execution = self._execute(executor, storage, output_store, run)
        assert final.status is RunStatus.FAILURE
        assert "boom on purpose" in (final.failure_reason or "")
        assert execution.failed == {"explode"}
        assert execution.skipped == {"after_explode"}
        assert execution.succeeded == {"root", "sibling"}
        positions = self._positions(storage, run.run_id)
        assert ("after_explode", _T.STEP_START) not in positions, "a skipped step was started"
        assert len(positions[("after_explode", _T.STEP_SKIPPED)]) == 1
        assert len(positions[("explode", _T.STEP_FAILURE)]) == 1
        assert output_store.get(run.run_id, "sibling") == 2

    def test_a_cancel_stops_new_steps_and_skips_the_rest(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        tmp_path: Path,
    ) -> None:
        started = tmp_path / "started"
        run = self._starting(
            storage,
            "gated",
            started=str(started),
            gate=str(tmp_path / "never"),
            gate_timeout=str(WAIT / 2),
        )
        cancel = threading.Event()
        thread, outcome = self._in_background(executor, storage, output_store, run, cancel=cancel)
        _until(started.exists, "the first step to start")
        cancel.set()
        final, execution = self._join(thread, outcome)
        assert final.status is RunStatus.CANCELED, final.failure_reason
        assert "after_gate" in execution.skipped
        positions = self._positions(storage, run.run_id)
        assert ("after_gate", _T.STEP_START) not in positions, "a step started after the cancel"
        for key in self._started_steps(storage, run.run_id):
            ends = [p for t in _STEP_ENDS for p in positions.get((key, t), [])]
            assert ends, f"execute returned while step {key!r} was still running"

    def test_steps_hold_their_pool_slot_while_they_run(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        tmp_path: Path,
    ) -> None:
        storage.set_pool_limit(POOL, 1)
        trace = tmp_path / "trace"
        trace.mkdir()
        run = self._starting(storage, "pooled", trace=str(trace))
        final, _ = self._execute(
            executor, storage, output_store, run, pools=StepPools(default_limit=None)
        )
        assert final.status is RunStatus.SUCCESS, final.failure_reason
        spans: list[tuple[float, float, str]] = []
        for path in trace.iterdir():
            start_text, end_text = path.read_text(encoding="utf-8").split()
            spans.append((float(start_text), float(end_text), path.stem))
        assert len(spans) == 3
        spans.sort()
        for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
            assert begin >= end, (
                f"steps {first!r} and {second!r} of pool {POOL!r} (limit 1) ran at the same time"
            )
        assert storage.get_pool_leases(POOL) == [], "a finished step kept its pool slot"

    def _hold_the_slot(self, storage: InstanceStorage) -> Run:
        """Another run, STARTED, holding the one slot of :data:`POOL`."""
        storage.set_pool_limit(POOL, 1)
        holder = self._starting(storage, "diamond")
        storage.transition(holder.run_id, [RunStatus.STARTING], RunStatus.STARTED)
        assert storage.claim_pool_slot(POOL, holder.run_id, "holder", limit=1)
        return holder

    def _wait_for_the_slot(self, storage: InstanceStorage, run: Run) -> None:
        def waiting() -> bool:
            events = storage.get_event_records(run.run_id, event_types=[_T.ENGINE_EVENT])
            return any(r.event.data.get("pool") == POOL for r in events)

        _until(waiting, "a step to wait for its pool slot")
        time.sleep(0.1)  # time enough for a step that ignored its slot to start
        assert self._started_steps(storage, run.run_id) == [], (
            "a step started while another run held its pool's only slot"
        )

    def test_steps_wait_for_a_slot_another_run_holds(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        tmp_path: Path,
    ) -> None:
        holder = self._hold_the_slot(storage)
        trace = tmp_path / "trace"
        trace.mkdir()
        run = self._starting(storage, "pooled", trace=str(trace))
        thread, outcome = self._in_background(
            executor, storage, output_store, run, pools=StepPools(default_limit=None)
        )
        self._wait_for_the_slot(storage, run)
        storage.release_pool_slots(holder.run_id)
        final, _ = self._join(thread, outcome)
        assert final.status is RunStatus.SUCCESS, final.failure_reason
        assert len(os.listdir(trace)) == 3

    def test_a_cancel_while_waiting_for_a_slot_starts_nothing(
        self,
        executor: Executor,
        storage: InstanceStorage,
        output_store: OutputStore,
        tmp_path: Path,
    ) -> None:
        holder = self._hold_the_slot(storage)
        trace = tmp_path / "trace"
        trace.mkdir()
        run = self._starting(storage, "pooled", trace=str(trace))
        cancel = threading.Event()
        thread, outcome = self._in_background(
            executor, storage, output_store, run, cancel=cancel, pools=StepPools()
        )
        self._wait_for_the_slot(storage, run)
        cancel.set()
        final, execution = self._join(thread, outcome)
        assert final.status is RunStatus.CANCELED, final.failure_reason
        assert self._started_steps(storage, run.run_id) == []
        assert execution.skipped == set(execution.plan.step_keys)
        leases = storage.get_pool_leases(POOL)
        assert [lease.run_id for lease in leases] == [holder.run_id], (
            "a canceled run kept (or took) a pool slot"
        )

    def test_one_executor_serves_concurrent_runs(
        self, executor: Executor, storage: InstanceStorage, output_store: OutputStore
    ) -> None:
        runs = [self._starting(storage, "diamond") for _ in range(3)]
        background = [self._in_background(executor, storage, output_store, run) for run in runs]
        for run, (thread, outcome) in zip(runs, background, strict=True):
            final, _ = self._join(thread, outcome)
            assert final.status is RunStatus.SUCCESS, final.failure_reason
            assert output_store.get(run.run_id, "bottom") == 12
