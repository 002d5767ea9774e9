"""One step of a run: its inputs, the op call with its retries, its output and events.

``StepRunner.run_step`` is shared by every executor, in this process or in a child process
(where ``emit`` sends the events to the parent). Executors call it through
``RunExecution.run_step_here`` (:mod:`runcore.worker.execution`), which first claims the
step's pool slot.
"""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from runcore.errors import Failure, OutputStoreError
from runcore.events import ErrorInfo, Event, EventType
from runcore.runs import Run
from runcore.worker.cancel import Cancel
from runcore.worker.capture import OutputSink, start_capture, stop_capture
from runcore.worker.context import OpContext, StepLogger, jsonable_fields
from runcore.worker.outputs import OutputStore
from runcore.worker.plan import ExecutionPlan, Step


class RunInterrupted(BaseException):
    """Raised inside op code on the main thread when the run's worker is told to stop.

    A ``BaseException``, so op code that catches ``Exception`` does not swallow it; the step
    fails with it, is not retried, and the run (whose cancel is set) ends CANCELED.
    """


_main_thread_in_op = False


def main_thread_in_op() -> bool:
    """Whether the main thread is inside op code now (so it may be interrupted)."""
    return _main_thread_in_op


class StepRunner:
    """Executes single steps of one run; events go to ``emit``.

    Holds no storage: in a child process ``emit`` sends events to the parent, which stores them.
    """

    def __init__(
        self,
        *,
        run: Run,
        plan: ExecutionPlan,
        output_store: OutputStore,
        emit: Callable[[Event], None],
        cancel: Cancel,
        parent_run_id: str | None = None,
        output: OutputSink | None = None,
    ) -> None:
        self.run = run
        self.output = output  # where ops' sys.stdout/sys.stderr go (runs on threads)
        self.plan = plan
        self.output_store = output_store
        self.emit = emit
        self.cancel = cancel
        self.parent_run_id = parent_run_id
        self.interrupt: BaseException | None = None  # a KeyboardInterrupt raised by an op
        self.errors: dict[str, BaseException] = {}  # step key -> the op's own exception

    def _step_event(
        self,
        step: Step,
        event_type: EventType,
        message: str = "",
        data: dict[str, Any] | None = None,
        error: ErrorInfo | None = None,
    ) -> None:
        self.emit(
            Event(
                run_id=self.run.run_id,
                event_type=event_type,
                step_key=step.key,
                message=message,
                data=data or {},
                error=error,
            )
        )

    def _load_inputs(self, step: Step) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for param, source in step.inputs.items():
            if source is None:
                kwargs[param] = step.op.input_defaults[param]
            elif source in step.external:
                if self.output_store.has(self.run.run_id, source):
                    # carried over from an earlier run (a from_failure retry copies them)
                    kwargs[param] = self.output_store.get(self.run.run_id, source)
                    continue
                if self.parent_run_id is None:
                    raise OutputStoreError(
                        f"step {step.key!r} needs the output of {source!r}, which this run does "
                        "not execute, and the run has no parent run to load it from"
                    )
                kwargs[param] = self.output_store.get(self.parent_run_id, source)
            else:
                kwargs[param] = self.output_store.get(self.run.run_id, source)
        return kwargs

    def run_step(self, step: Step) -> bool:
        """Execute ``step`` in this thread; returns whether it succeeded.

        Emits STEP_START, then LOG and STEP_UP_FOR_RETRY events as they come, then STEP_OUTPUT
        and STEP_SUCCESS, or STEP_FAILURE with the error. Never raises for op errors.

        Claims no pool slot: an executor calls :meth:`RunExecution.run_step_here` instead
        (or, for a step it runs in another process, :meth:`RunExecution.try_claim` first and
        this method there).
        """
        started = time.perf_counter()
        self._step_event(step, EventType.STEP_START)
        try:
            kwargs = self._load_inputs(step)
        except OutputStoreError as exc:
            self._step_event(
                step, EventType.STEP_FAILURE, str(exc), error=ErrorInfo.from_exception(exc)
            )
            return False
        try:
            value = self._call_with_retries(step, kwargs)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                self.interrupt = exc
                self.cancel.set()
            elif isinstance(exc, RunInterrupted):
                self.cancel.set()  # the worker's signal handler only records the request
            self.errors[step.key] = exc
            data = jsonable_fields(exc.metadata) if isinstance(exc, Failure) else {}
            if isinstance(exc, Failure) and not exc.allow_retry:
                data["allow_retry"] = False
            self._step_event(
                step,
                EventType.STEP_FAILURE,
                f"op {step.op.name!r} raised {type(exc).__name__}: {exc}",
                data=data,
                error=ErrorInfo.from_exception(exc),
            )
            return False
        try:
            self.output_store.put(self.run.run_id, step.key, value)
        except OutputStoreError as exc:
            self._step_event(
                step, EventType.STEP_FAILURE, str(exc), error=ErrorInfo.from_exception(exc)
            )
            return False
        self._step_event(step, EventType.STEP_OUTPUT, data={"type": type(value).__name__})
        self._step_event(
            step,
            EventType.STEP_SUCCESS,
            data={"duration_s": round(time.perf_counter() - started, 6)},
        )
        return True

    def _call(self, step: Step, kwargs: Mapping[str, Any], attempt: int) -> Any:
        if self.output is not None:
            token = start_capture(self.output, step.key)
            try:
                return self._call_here(step, kwargs, attempt)
            finally:
                stop_capture(token)
        return self._call_here(step, kwargs, attempt)

    def _call_here(self, step: Step, kwargs: Mapping[str, Any], attempt: int) -> Any:
        if threading.current_thread() is threading.main_thread():
            global _main_thread_in_op  # noqa: PLW0603 - read by the worker's SIGTERM handler
            _main_thread_in_op = True
            try:
                return self._call_op(step, kwargs, attempt)
            finally:
                _main_thread_in_op = False
        return self._call_op(step, kwargs, attempt)

    def _call_op(self, step: Step, kwargs: Mapping[str, Any], attempt: int) -> Any:
        op_def = step.op
        if op_def.takes_context:
            ctx = OpContext(
                run_id=self.run.run_id,
                job_name=self.run.job_name,
                op_name=op_def.name,
                step_key=step.key,
                tags=self.run.tags,
                op_tags=op_def.tags,
                log=StepLogger(self.run.run_id, step.key, self.emit),
                cancel=self.cancel,
                attempt=attempt,
            )
            result = op_def.fn(ctx, **kwargs)
        else:
            result = op_def.fn(**kwargs)
        if inspect.iscoroutine(result):
            # An ``async def`` op: its step runs on an event loop of its own, in this thread.
            import asyncio

            return asyncio.run(result)
        return result

    def _call_with_retries(self, step: Step, kwargs: Mapping[str, Any]) -> Any:
        """Call the op; on an ``Exception`` retry as its ``RetryPolicy`` says.

        Not retried: ``Failure(allow_retry=False)``, ``BaseException`` that is not an
        ``Exception`` (``KeyboardInterrupt``, ``SystemExit``), and any failure once the run is
        being canceled; a cancel during the wait before a retry ends the wait and the step
        fails with its last error.
        """
        if step.op.retry_policy is None or step.op.retry_policy.max_retries == 0:
            return self._call(step, kwargs, 1)
        from runcore._retry import retry_step

        policy = step.op.retry_policy

        def wait_before(retry_number: int) -> float:
            extra = random.uniform(0, policy.jitter) if policy.jitter else 0.0
            return policy.wait_before(retry_number) + extra

        def on_retry(attempt: int, exc: BaseException, wait: float) -> None:
            self._step_event(
                step,
                EventType.STEP_UP_FOR_RETRY,
                f"op {step.op.name!r} failed (attempt {attempt} of "
                f"{policy.max_retries + 1}); retrying in {wait:.3g}s",
                data={"attempt": attempt, "wait_s": wait},
                error=ErrorInfo.from_exception(exc),
            )

        return retry_step(
            lambda attempt: self._call(step, kwargs, attempt),
            retries=policy.max_retries,
            wait_before=wait_before,
            may_retry=lambda exc: (
                isinstance(exc, Exception)
                and not (isinstance(exc, Failure) and not exc.allow_retry)
            ),
            on_retry=on_retry,
            cancel=self.cancel,
        )
