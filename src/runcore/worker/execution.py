"""The run worker's core: execute one run's plan, step by step, writing events as it goes.

``execute_run`` is what every launcher ends up calling, in a thread here or in a worker
process: it moves the run to STARTED, hands the plan to the executor, and moves the run to its
terminal status with the reason. Each step is executed by a
:class:`~runcore.worker.steps.StepRunner` (:mod:`runcore.worker.steps`); executors call it
through ``RunExecution.run_step_here``, which first claims the step's pool slot.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from runcore import _validate
from runcore.definitions import Job
from runcore.errors import RunFailedError
from runcore.events import Event, EventType
from runcore.executors.in_process import InProcessExecutor
from runcore.runs import FailureKind, Run, RunStatus, check_user_tags
from runcore.storage.base import move_run
from runcore.worker import heartbeats as _heartbeats
from runcore.worker.cancel import Cancel, CancelEvent
from runcore.worker.capture import DEFAULT_MAX_BYTES, FdCapture, OutputSink
from runcore.worker.hooks import HookCaller, RunHooks
from runcore.worker.outputs import InMemoryOutputStore, OutputStore
from runcore.worker.plan import ExecutionPlan, Step, build_plan, resolve_op_selection
from runcore.worker.steps import StepRunner

if TYPE_CHECKING:
    from runcore.executors.base import Executor
    from runcore.instance import Instance
    from runcore.storage.base import InstanceStorage
    from runcore.worker.result import ExecuteInProcessResult


_STEP_ENDS = frozenset({EventType.STEP_SUCCESS, EventType.STEP_FAILURE})


@attrs.frozen
class StepPools:
    """Op-granularity pools: each step with a pool claims a slot before it runs.

    ``default_limit`` applies to pools with no limit set in storage (None: unlimited).
    """

    default_limit: int | None = None


class RunExecution:
    """One run in progress: its plan, its step runner and the outcome of each step.

    Executors drive it: they ask for ready steps, run them (here or in a child process) and
    report outcomes with :meth:`finish_step`; it works out which steps to skip.
    """

    def __init__(
        self,
        *,
        run: Run,
        plan: ExecutionPlan,
        storage: InstanceStorage,
        output_store: OutputStore,
        cancel: Cancel | None = None,
        pools: StepPools | None = None,
        output: OutputSink | None = None,
        process_output: FdCapture | None = None,
        hooks: HookCaller | None = None,
    ) -> None:
        self.run = run
        self.hooks = hooks if hooks is not None else HookCaller()
        self.plan = plan
        # Output captured for the whole process is put down to the step running, when only
        # one runs (with several, a line cannot be told apart).
        self._process_output = process_output
        self._running_steps: dict[str, None] = {}  # an ordered set (a set is 216 bytes)
        self.storage = storage
        self.output_store = output_store
        self.cancel: Cancel = cancel if cancel is not None else CancelEvent()
        self.pools = pools
        self._holding: dict[str, str] = {}  # step key -> pool it holds a slot in
        self._waiting: dict[str, None] = {}  # steps told they wait for a pool slot
        self.succeeded: set[str] = set()
        self.failed: set[str] = set()
        self.skipped: set[str] = set()
        self._lock = threading.Lock()
        self.runner = StepRunner(
            run=run,
            plan=plan,
            output_store=output_store,
            emit=self.emit,
            cancel=self.cancel,
            parent_run_id=run.parent_run_id,
            output=output,
        )

    def _note_step(self, event: Event) -> None:
        if self._process_output is None or event.step_key is None:
            return
        if event.event_type is EventType.STEP_START:
            self._running_steps[event.step_key] = None
        elif event.event_type in _STEP_ENDS or event.event_type is EventType.STEP_SKIPPED:
            self._running_steps.pop(event.step_key, None)
        else:
            return
        self._process_output.drain()  # lines already written belong to the step before
        only = next(iter(self._running_steps)) if len(self._running_steps) == 1 else None
        self._process_output.sink.default_step = only

    def emit(self, event: Event) -> None:
        """Store one event of this run (a step's end frees its pool slot in the same write)."""
        self._note_step(event)
        if event.step_key in self._holding and event.event_type in _STEP_ENDS:
            self._release(event.step_key, [event])
        else:
            self.storage.store_event(event)
        if self.hooks:
            self.hooks.events(self.run, [event])

    def emit_many(self, events: Sequence[Event]) -> None:
        """Store several events of this run in one write."""
        for event in events:
            self._note_step(event)
        if not self._holding:
            self.storage.store_events(events)
            if self.hooks:
                self.hooks.events(self.run, events)
            return
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if event.step_key in self._holding and event.event_type in _STEP_ENDS:
                self._release(event.step_key, batch)
                batch = []
        if batch:
            self.storage.store_events(batch)
        if self.hooks:
            self.hooks.events(self.run, events)

    # --- op-granularity pool slots ------------------------------------------------------------

    def _pool_limit(self, pool: str) -> int | None:
        assert self.pools is not None
        limit = self.storage.get_pool_limits().get(pool)
        return self.pools.default_limit if limit is None else limit

    def try_claim(self, step: Step) -> bool:
        """Take the slot ``step`` needs in its pool, if any; False if it must wait.

        The first time a step has to wait, an ENGINE_EVENT says for which pool and who holds
        its slots, so a user can see why the step has not started.
        """
        pool = step.op.pool
        if self.pools is None or pool is None or step.key in self._holding:
            return True
        limit = self._pool_limit(pool)
        if limit is None:
            return True
        granted = self.storage.claim_pool_slot(
            pool,
            self.run.run_id,
            step.key,
            limit=limit,
            priority=self.run.priority,
            order=self.run.created_at,
        )
        if granted:
            self._holding[step.key] = pool
            self._waiting.pop(step.key, None)
        elif step.key not in self._waiting:
            self._waiting[step.key] = None
            holders = [
                lease.run_id + (f"/{lease.step_key}" if lease.step_key else "")
                for lease in self.storage.get_pool_leases(pool)
            ]
            self.emit(
                Event(
                    run_id=self.run.run_id,
                    event_type=EventType.ENGINE_EVENT,
                    step_key=step.key,
                    message=f"waiting for a slot in pool {pool!r} ({len(holders)} of {limit} "
                    f"held{': ' + ', '.join(holders[:5]) if holders else ''})",
                    data={"pool": pool, "limit": limit, "held": len(holders)},
                )
            )
        return granted

    def acquire(self, step: Step) -> bool:
        """Wait until ``step`` holds its pool slot; False if the run was canceled meanwhile."""
        delay = 0.005
        while not self.try_claim(step):
            if self.cancel.wait(delay):
                return False
            delay = min(delay * 2, 0.25)
        if self.cancel.is_set():  # canceled just as the slot came: give it back
            if step.key in self._holding:
                self._release(step.key, [])
            return False
        return True

    def _release(self, step_key: str, events: Sequence[Event]) -> None:
        self._holding.pop(step_key, None)
        self.storage.release_pool_slots(self.run.run_id, step_key, events=events)

    def run_step_here(self, step: Step) -> bool | None:
        """Claim the step's slot (waiting for it), then run it in this thread.

        Returns the step's success, or None if the run was canceled while it waited.
        """
        if not self.acquire(step):
            return None
        return self.runner.run_step(step)

    def use_output_store(self, store: OutputStore) -> None:
        """Switch the store steps read and write (executors whose steps run elsewhere do)."""
        self.output_store = store
        self.runner.output_store = store

    @property
    def done(self) -> set[str]:
        """Step keys that have finished one way or another."""
        return self.succeeded | self.failed | self.skipped

    def is_ready(self, step: Step) -> bool:
        """Whether every upstream step of ``step`` has succeeded."""
        return all(u in self.succeeded for u in step.upstream)

    def finish_step(self, key: str, success: bool) -> list[Step]:
        """Record a step's outcome; returns the steps that became ready because of it.

        A failed step's downstream steps are skipped (with a STEP_SKIPPED event each).
        """
        with self._lock:
            (self.succeeded if success else self.failed).add(key)
            if not success:
                self._skip_downstream(key)
                return []
            ready = []
            for down in self.plan.downstream[key]:
                step = self.plan.get_step(down)
                if down not in self.skipped and self.is_ready(step):
                    ready.append(step)
            return ready

    def _skip_downstream(self, key: str) -> None:
        skipped = []
        for down in self.plan.descendants(key):
            if down not in self.skipped and down not in self.succeeded:
                self.skipped.add(down)
                skipped.append(down)
        if skipped:
            self.emit_many(
                [
                    Event(
                        run_id=self.run.run_id,
                        event_type=EventType.STEP_SKIPPED,
                        step_key=k,
                        message=f"skipped: upstream step {key!r} failed",
                    )
                    for k in self.plan.step_keys
                    if k in skipped
                ]
            )

    def skip_remaining(self, reason: str) -> None:
        """Skip every step that has not run (on cancel)."""
        with self._lock:
            remaining = [k for k in self.plan.step_keys if k not in self.done]
            self.skipped.update(remaining)
        if remaining:
            self.emit_many(
                [
                    Event(
                        run_id=self.run.run_id,
                        event_type=EventType.STEP_SKIPPED,
                        step_key=k,
                        message=reason,
                    )
                    for k in remaining
                ]
            )


def _failure_reason(execution: RunExecution) -> tuple[str, dict[str, Any]]:
    """The run's failure reason (its first failed step's error) and the failure event's data:
    the kind (``user_code``, or ``worker_died`` when a step's process died) and whether a run
    retry is allowed (not when a step raised ``Failure(allow_retry=False)``)."""
    failures = {
        r.event.step_key: r.event
        for r in execution.storage.get_event_records(
            execution.run.run_id, event_types=[EventType.STEP_FAILURE]
        )
    }
    first = next(k for k in execution.plan.step_keys if k in execution.failed)
    event = failures.get(first)
    reason = f"step {first!r} failed" + (f": {event.error}" if event and event.error else "")
    died = any(e.error is not None and e.error.type == "WorkerDied" for e in failures.values())
    kind = FailureKind.WORKER_DIED if died else FailureKind.USER_CODE
    data: dict[str, Any] = {"failure_kind": kind.value, "failed_steps": sorted(execution.failed)}
    if any(e.data.get("allow_retry") is False for e in failures.values()):
        data["allow_retry"] = False
    return reason, data


def execute_run(
    run: Run,
    job: Job,
    *,
    storage: InstanceStorage,
    output_store: OutputStore,
    executor: Executor | None = None,
    cancel: Cancel | None = None,
    pools: StepPools | None = None,
    heartbeat_interval: float | None = None,
    capture: Literal["process", "thread"] | None = None,
    capture_max_bytes: int | None = None,
    hooks: Sequence[RunHooks] = (),
) -> tuple[Run, RunExecution | None]:
    """Execute ``run`` (STARTING) to a terminal status; returns the final run.

    A run that is no longer startable (canceled meanwhile) is left as it is. Errors of the
    engine itself (not of op code) end the run FAILURE with the error; nothing is left STARTED.

    With ``heartbeat_interval``, the run's worker heartbeats into storage while the run is
    STARTED (see :mod:`runcore.worker.heartbeats`): how run monitoring tells, from any host,
    that the worker lives.

    ``capture`` stores what the run writes to stdout and stderr as LOG events (see
    :mod:`runcore.worker.capture`): ``"process"`` in a worker process that executes this run
    alone (which also stores the process's ``RESOURCE_METRICS`` before the run ends),
    ``"thread"`` for a run on a thread of a shared process; ``capture_max_bytes`` bounds it.
    ``hooks`` observe the run (see :mod:`runcore.worker.hooks`).
    """
    # Only for the attempt this worker was started for (a given-up attempt cannot start).
    started = storage.transition(
        run.run_id, [RunStatus.STARTING], RunStatus.STARTED, attempt_id=run.attempt_id
    )
    if started is None:
        # Canceled before a worker picked it up: finish the cancel, start nothing.
        canceled = move_run(
            storage,
            run.run_id,
            [RunStatus.CANCELING],
            RunStatus.CANCELED,
            "the run was canceled before it started",
        )
        return (canceled or storage.get_run(run.run_id) or run), None
    options = _Options(
        storage=storage,
        output_store=output_store,
        executor=executor,
        cancel=cancel,
        pools=pools,
        capture=capture,
        capture_max_bytes=capture_max_bytes,
        hooks=HookCaller(hooks),
    )
    options.hooks.run_start(started)
    beating = heartbeat_interval is not None and started.attempt_id is not None
    if beating:
        _heartbeats.register(storage, run.run_id, started.attempt_id or "", heartbeat_interval)
    try:
        final, execution = _execute_captured(started, job, options)
    finally:
        if beating:
            _heartbeats.unregister(storage, run.run_id)
    options.hooks.run_end(final)
    return final, execution


@attrs.frozen
class _Options:
    """How :func:`execute_run` executes a started run."""

    storage: InstanceStorage
    output_store: OutputStore
    executor: Executor | None
    cancel: Cancel | None
    pools: StepPools | None
    capture: Literal["process", "thread"] | None
    capture_max_bytes: int | None
    hooks: HookCaller


def _execute_captured(started: Run, job: Job, options: _Options) -> tuple[Run, RunExecution | None]:
    """Execute a STARTED run with its output captured as ``options.capture`` says."""
    if options.capture is None:
        return _execute_started(started, job, options)
    limit = options.capture_max_bytes
    sink = OutputSink(
        started.run_id,
        options.storage.store_events,
        max_bytes=DEFAULT_MAX_BYTES if limit is None else limit,
    )
    fds = FdCapture(sink) if options.capture == "process" else None
    if fds is not None:
        fds.start()
    try:
        return _execute_started(started, job, options, sink=sink, fds=fds)
    finally:
        if fds is not None:
            fds.stop()
        else:
            sink.close()


def _execute_started(
    started: Run,
    job: Job,
    options: _Options,
    *,
    sink: OutputSink | None = None,
    fds: FdCapture | None = None,
) -> tuple[Run, RunExecution | None]:

    storage = options.storage
    begun = time.monotonic()
    execution: RunExecution | None = None
    try:
        plan = build_plan(
            job, started.step_keys_to_execute, allow_external=started.parent_run_id is not None
        )
        execution = RunExecution(
            run=started,
            plan=plan,
            storage=storage,
            output_store=options.output_store,
            cancel=options.cancel,
            pools=options.pools,
            output=sink if fds is None else None,
            process_output=fds,
            hooks=options.hooks,
        )
        (options.executor or job.executor or InProcessExecutor()).execute(execution)
    except BaseException as exc:
        _before_the_end(started, options, sink, fds, begun)
        final = move_run(
            storage,
            started.run_id,
            [RunStatus.STARTED, RunStatus.CANCELING],
            RunStatus.FAILURE,
            f"the run's execution failed: {type(exc).__name__}: {exc}",
            error=exc,
            kind=FailureKind.ENGINE,
        )
        if not isinstance(exc, Exception):
            raise
        return (final or storage.get_run(started.run_id) or started), execution
    _before_the_end(started, options, sink, fds, begun)
    return _finish(execution), execution


def _before_the_end(
    started: Run,
    options: _Options,
    sink: OutputSink | None,
    fds: FdCapture | None,
    begun: float,
) -> None:
    """Store the run's output (and, in a worker process of its own, its resource metrics)
    before its final status, so that a reader that stops at the final status has seen all
    of it. (Not a closure of :func:`_execute_started`: a code server holds one frame of it per
    run thread, and a closure's cells are made on entry.)"""
    if options.capture is None:
        return
    with contextlib.suppress(Exception):
        if fds is not None:
            fds.flush()
        elif sink is not None:
            sink.flush(partial=True)
    if options.capture == "process":
        with contextlib.suppress(Exception):
            event = resource_metrics_event(started.run_id, time.monotonic() - begun)
            options.storage.store_event(event)
            options.hooks.events(started, [event])


def resource_metrics_event(run_id: str, wall_seconds: float) -> Event:
    """A ``RESOURCE_METRICS`` event of this process (a worker process executing one run):
    its peak resident memory and CPU time so far, and the run's wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return Event(
        run_id=run_id,
        event_type=EventType.RESOURCE_METRICS,
        message="the worker process's peak memory and CPU time",
        data={
            "scope": "process",
            "peak_rss_bytes": int(usage.ru_maxrss) * scale,
            "children_peak_rss_bytes": int(children.ru_maxrss) * scale,
            "cpu_user_seconds": round(usage.ru_utime + children.ru_utime, 6),
            "cpu_system_seconds": round(usage.ru_stime + children.ru_stime, 6),
            "wall_seconds": round(wall_seconds, 6),
        },
    )


def _finish(execution: RunExecution) -> Run:
    run_id = execution.run.run_id
    storage = execution.storage
    canceled = execution.cancel.is_set() and execution.runner.interrupt is None
    both = [RunStatus.STARTED, RunStatus.CANCELING]
    if execution.failed and not canceled:
        reason, data = _failure_reason(execution)
        final = move_run(storage, run_id, both, RunStatus.FAILURE, reason, data=data)
    elif canceled or execution.skipped:
        # The cancel event may have been set directly (not through Instance.cancel_run, which
        # moves the run to CANCELING first): STARTED cannot go straight to CANCELED.
        move_run(
            storage, run_id, [RunStatus.STARTED], RunStatus.CANCELING, "the run's cancel was set"
        )
        final = move_run(
            storage, run_id, [RunStatus.CANCELING], RunStatus.CANCELED, "the run was canceled"
        )
    else:
        final = move_run(
            storage,
            run_id,
            [RunStatus.STARTED],
            RunStatus.SUCCESS,
            f"{len(execution.succeeded)} steps succeeded",
        )
        if final is None:  # canceled while its last step ran: the cancel wins
            final = move_run(
                storage,
                run_id,
                [RunStatus.CANCELING],
                RunStatus.CANCELED,
                "the run was canceled as it finished",
            )
    return final or storage.get_run(run_id) or execution.run


@functools.cache
def _upward() -> tuple[type[Instance], type[ExecuteInProcessResult]]:
    """The instance and result classes ``execute_in_process`` uses, imported on its first call
    (they import this module) and then remembered: an import statement per call costs more
    than a one-op job."""
    from runcore.instance import Instance
    from runcore.worker.result import ExecuteInProcessResult

    return Instance, ExecuteInProcessResult


def execute_job_in_process(
    job: Job,
    *,
    instance: Instance | None,
    tags: Mapping[str, str] | None,
    op_selection: Sequence[str] | None,
    raise_on_error: bool,
    run_id: str | None,
    executor: Executor | None,
) -> ExecuteInProcessResult:
    """Implementation of :meth:`Job.execute_in_process`."""
    instance_class, result_class = _upward()
    # An owned ephemeral instance is left open: it holds no threads or files, and the
    # result reads its events from the in-memory storage later.
    inst = instance_class.ephemeral() if instance is None else instance
    step_keys = resolve_op_selection(job, op_selection) if op_selection else None
    if step_keys is not None:
        build_plan(job, step_keys)  # a selection missing an upstream fails here, clearly
    kwargs: dict[str, Any] = {}
    if run_id is not None:
        kwargs["run_id"] = _validate.run_id(run_id)
    run = Run(
        job_name=job.name,
        tags={**job.tags, **check_user_tags(tags)},
        code_location=job.code_location,
        step_keys_to_execute=step_keys,
        **kwargs,
    )
    storage = inst.storage
    storage.start()
    storage.add_run(run)
    storage.transition(run.run_id, [RunStatus.NOT_STARTED], RunStatus.STARTING)
    outputs = InMemoryOutputStore()
    final, execution = execute_run(
        run,
        job,
        storage=storage,
        output_store=outputs,
        executor=executor,
        pools=None if instance is None else instance.step_pools,
        hooks=() if instance is None else (*inst._config_hooks(), *inst.run_hooks),
    )
    result = result_class(
        run=final,
        storage=storage,
        output_store=execution.output_store if execution else outputs,
        op_names=job.order,
    )
    interrupt = execution.runner.interrupt if execution else None
    if interrupt is not None:
        raise interrupt
    if raise_on_error and final.status is not RunStatus.SUCCESS:
        failure = result.first_failure()
        step_key = failure.step_key if failure else None
        original = execution.runner.errors.get(step_key or "") if execution else None
        if isinstance(original, Exception):
            original.add_note(f"runcore: step {step_key!r} of run {final.run_id} failed")
            raise original
        message = final.failure_reason or f"run {final.run_id} ended {final.status.value}"
        raise RunFailedError(
            f"job {job.name!r} failed: {message}", run_id=final.run_id, step_key=step_key
        )
    return result
