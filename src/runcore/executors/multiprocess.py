"""Concurrent execution in worker processes, reused across the steps of a run.

The run's process starts ``max_concurrent`` workers once per run and feeds them steps, so a
step costs a message round trip, not an interpreter start:

* ``start_method="fork"`` (the default on Linux): workers are forked from the run's process
  with the job already imported; jobs defined anywhere (even in ``__main__``) work.
* ``"spawn"`` or ``"forkserver"``: workers start fresh and import the job from the run's code
  location, so the job must be importable (``Run.code_location``).

Parent and workers speak JSON over pipes: a worker first reports that it loaded the job (or
the error that stopped it, which fails the run with the worker's traceback), then the parent
sends a step key and the worker sends back the step's events and its outcome. The parent
stores the events, so workers never open the storage. Step outputs travel through a
:class:`~runcore.worker.outputs.FileOutputStore` (pickled files, the one documented place
user values are pickled); when the run was given an in-memory store, a temporary directory
is used and the outputs are copied back at the end.

A worker that dies (killed, segfault, ``os._exit``) fails the step it was running with its
exit code or signal, and is replaced before it is given another step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from runcore import _serde
from runcore.definitions import infer_code_location, load_code_location
from runcore.errors import CodeLocationError, DefinitionError
from runcore.events import ErrorInfo, Event, EventType
from runcore.executors.base import CANCELED_REASON, Executor
from runcore.worker.outputs import FileOutputStore, OutputStore
from runcore.worker.plan import build_plan
from runcore.worker.steps import StepRunner

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    from runcore.definitions import Job
    from runcore.worker.execution import RunExecution
    from runcore.worker.plan import Step


def _wait(handles: list[Any], timeout: float) -> list[Any]:
    """``multiprocessing.connection.wait``, imported on first use."""
    from multiprocessing.connection import wait

    return wait(handles, timeout=timeout)


_START_METHODS = ("fork", "spawn", "forkserver")


def _worker_main(
    conn: Connection, spec_json: str, job: Job | None
) -> None:  # pragma: no cover - runs in the child process
    """A worker's loop: load the job, say so, then receive a step key, run it, send its events
    and outcome, until told to stop."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about interrupts
    spec = json.loads(spec_json)
    run = _serde.loads_run(spec["run"])
    try:
        if job is None:
            job = load_code_location(spec["code_location"]).get_job(run.job_name)
        plan = build_plan(job, spec["step_keys"], allow_external=run.parent_run_id is not None)
    except BaseException as exc:
        conn.send_bytes(b"X" + _serde.dumps(ErrorInfo.from_exception(exc)).encode())
        return
    conn.send_bytes(b"R")
    send_lock = threading.Lock()  # the output sink sends from its own thread too

    def emit(event: Event) -> None:
        data = b"E" + _serde.dumps_event(event).encode()
        with send_lock:
            conn.send_bytes(data)

    output = None
    if spec.get("capture_bytes") is not None:
        # The run captures sys.stdout/sys.stderr (a run on a thread): so does this worker,
        # sending the lines to the parent as events, within what is left of the budget.
        from runcore.worker.capture import OutputSink

        def emit_all(events: Sequence[Event]) -> None:
            for event in events:
                emit(event)

        output = OutputSink(run.run_id, emit_all, max_bytes=spec["capture_bytes"])
    runner = StepRunner(
        run=run,
        plan=plan,
        output_store=FileOutputStore(spec["outputs_dir"]),
        emit=emit,
        cancel=threading.Event(),
        parent_run_id=run.parent_run_id,
        output=output,
    )
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:
                return
            if message == b"stop":
                return
            key = message.decode()
            ok = runner.run_step(plan.get_step(key))
            if output is not None:
                output.flush(partial=True)
            with send_lock:
                conn.send_bytes((b"S" if ok else b"F") + message)
    finally:
        if output is not None:
            output.close()


class _Worker:
    """The parent's handle on one worker: its process, its pipe and the step it is running."""

    __slots__ = ("conn", "process", "step")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.step: str | None = None


class MultiprocessExecutor(Executor):
    """Runs up to ``max_concurrent`` steps at once, each in a worker process.

    Threads: none kept; per run, ``max_concurrent`` worker processes (or fewer, for smaller
    plans) are started, reused for every step, and stopped before :meth:`execute` returns.
    """

    def __init__(self, max_concurrent: int | None = None, *, start_method: str = "fork") -> None:
        if max_concurrent is not None and (
            not isinstance(max_concurrent, int) or max_concurrent < 1
        ):
            raise DefinitionError(
                "MultiprocessExecutor(max_concurrent=...) must be an int >= 1, "
                f"got {max_concurrent!r}"
            )
        if start_method not in _START_METHODS:
            raise DefinitionError(
                f"MultiprocessExecutor(start_method=...) must be one of {_START_METHODS}, "
                f"got {start_method!r}"
            )
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.start_method = start_method

    def __repr__(self) -> str:
        return (
            f"MultiprocessExecutor(max_concurrent={self.max_concurrent}, "
            f"start_method={self.start_method!r})"
        )

    # --- workers ----------------------------------------------------------------------------

    def _code_location(self, execution: RunExecution) -> str | None:
        if self.start_method == "fork":
            return execution.run.code_location

        location = execution.run.code_location or infer_code_location(execution.plan.job)
        if not location:
            raise DefinitionError(
                f"MultiprocessExecutor(start_method={self.start_method!r}) needs a job its "
                f"workers can import, but job {execution.run.job_name!r} has no code location; "
                "define it at module level of an importable module (or load it with "
                "runcore.load_code_location), or use start_method='fork'"
            )
        return location

    def _spawn(
        self, ctx: BaseContext, execution: RunExecution, outputs_dir: str, location: str | None
    ) -> _Worker:
        """Start one worker; it loads the job and reports (see :meth:`_await_ready`)."""
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        run = execution.run
        spec = json.dumps(
            {
                "run": _serde.dumps_run(run),
                "code_location": location,
                "step_keys": execution.plan.step_keys,
                "outputs_dir": outputs_dir,
                "capture_bytes": _capture_budget(execution),
            }
        )
        job = execution.plan.job if self.start_method == "fork" else None
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child_conn, spec, job),
            name=f"runcore-step-worker-{run.run_id[:8]}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    @staticmethod
    def _await_ready(execution: RunExecution, worker: _Worker, location: str | None) -> None:
        """Wait until ``worker`` has loaded the job; raise if it could not.

        Returns early (the worker not ready) when the run is canceled meanwhile.
        """
        while not execution.cancel.is_set():
            if not _wait([worker.conn, worker.process.sentinel], timeout=0.1):
                continue
            try:
                message = worker.conn.recv_bytes()
            except (EOFError, OSError):
                worker.process.join(timeout=1)
                raise CodeLocationError(
                    f"a worker process of run {execution.run.run_id} for job "
                    f"{execution.run.job_name!r} exited with code {worker.process.exitcode} "
                    "before it had loaded the job"
                ) from None
            if message == b"R":
                return
            error = _serde.loads(message[1:], ErrorInfo)
            where = f"from {location!r}" if location else "(forked)"
            raise CodeLocationError(
                f"a worker process could not load job {execution.run.job_name!r} {where}: "
                f"{error}\n{error.traceback}"
            )

    @staticmethod
    def _stop(workers: list[_Worker], *, force: bool) -> None:
        for worker in workers:
            if force:
                if worker.process.is_alive():
                    worker.process.terminate()
            else:
                with contextlib.suppress(OSError):
                    worker.conn.send_bytes(b"stop")
        for worker in workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()

    # --- the loop ---------------------------------------------------------------------------

    def execute(self, execution: RunExecution) -> None:
        original = execution.output_store
        temp_dir: str | None = None
        if isinstance(original, FileOutputStore):
            files = original
        else:
            temp_dir = tempfile.mkdtemp(prefix="runcore-outputs-")
            files = FileOutputStore(temp_dir)
            _copy_external_inputs(execution, original, files)
            execution.use_output_store(files)
        import multiprocessing

        ctx = multiprocessing.get_context(self.start_method)
        count = min(self.max_concurrent, len(execution.plan.steps))
        workers: list[_Worker] = []
        try:
            location = self._code_location(execution)
            for _ in range(count):
                workers.append(self._spawn(ctx, execution, files.base_dir, location))
            for worker in workers:
                self._await_ready(execution, worker, location)
            self._drive(execution, ctx, workers, files.base_dir, location)
        except BaseException:
            execution.cancel.set()  # Ctrl-C or an engine error: stop the workers, do not wait
            raise
        finally:
            self._stop(workers, force=execution.cancel.is_set())
            if temp_dir is not None:
                execution.use_output_store(original)
                for key in execution.succeeded:
                    original.put(execution.run.run_id, key, files.get(execution.run.run_id, key))
                shutil.rmtree(temp_dir, ignore_errors=True)
        if execution.cancel.is_set():
            execution.skip_remaining(CANCELED_REASON)

    def _drive(
        self,
        execution: RunExecution,
        ctx: BaseContext,
        workers: list[_Worker],
        outputs_dir: str,
        location: str | None,
    ) -> None:
        def replace(index: int) -> _Worker:
            workers[index].conn.close()
            fresh = self._spawn(ctx, execution, outputs_dir, location)
            workers[index] = fresh
            self._await_ready(execution, fresh, location)
            return fresh

        ready: list[Step] = execution.plan.roots()
        while True:
            if execution.cancel.is_set():
                for worker in workers:
                    if worker.step is not None and worker.process.is_alive():
                        worker.process.terminate()
            else:
                for index, worker in enumerate(workers):
                    if not ready or execution.cancel.is_set():
                        break
                    if worker.step is not None:
                        continue
                    step = next((s for s in ready if execution.try_claim(s)), None)
                    if step is None:
                        break  # every ready step waits for a pool slot; look again soon
                    if not worker.process.is_alive():  # died while idle (e.g. OOM-killed)
                        worker = replace(index)  # noqa: PLW2901
                        if execution.cancel.is_set():
                            break
                    ready.remove(step)
                    worker.step = step.key
                    with contextlib.suppress(OSError):  # a death now shows on its sentinel
                        worker.conn.send_bytes(step.key.encode())
            busy = [w for w in workers if w.step is not None]
            if not busy:
                if not ready or execution.cancel.is_set():
                    return
                execution.cancel.wait(0.05)  # ready steps wait for pool slots
                continue
            by_handle: dict[Any, _Worker] = {}
            for worker in busy:
                by_handle[worker.conn] = worker
                by_handle[worker.process.sentinel] = worker
            woken = _wait(list(by_handle), timeout=0.1)
            for worker in {id(by_handle[h]): by_handle[h] for h in woken}.values():
                ready.extend(self._collect(execution, worker))
                if worker.step is not None and not worker.process.is_alive():
                    ready.extend(self._worker_died(execution, worker))
                    # Replaced lazily, when a step is next given to it.

    @staticmethod
    def _collect(execution: RunExecution, worker: _Worker) -> list[Step]:
        """Read what a worker has sent; store its events; return newly ready steps."""
        events: list[Event] = []
        ready: list[Step] = []
        try:
            while worker.conn.poll():
                message = worker.conn.recv_bytes()
                kind, body = message[:1], message[1:]
                if kind == b"E":
                    events.append(_serde.loads_event(body))
                    continue
                if events:
                    execution.emit_many(events)
                    events = []
                worker.step = None
                ready.extend(execution.finish_step(body.decode(), kind == b"S"))
        except (EOFError, OSError):
            pass
        if events:
            execution.emit_many(events)
        return ready

    @staticmethod
    def _worker_died(execution: RunExecution, worker: _Worker) -> list[Step]:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        key = worker.step
        assert key is not None
        worker.step = None
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        message = f"the worker process running step {key!r} {how}"
        if execution.cancel.is_set():
            message += " (the run was canceled)"
        execution.emit(
            Event(
                run_id=execution.run.run_id,
                event_type=EventType.STEP_FAILURE,
                step_key=key,
                message=message,
                error=ErrorInfo(type="WorkerDied", message=message),
                data={"exit_code": code},
            )
        )
        return execution.finish_step(key, False)


def _capture_budget(execution: RunExecution) -> int | None:
    """What is left of the run's captured-output budget, if it captures sys.stdout/stderr."""
    sink = execution.runner.output
    return None if sink is None else max(0, sink.max_bytes - sink.used)


def _copy_external_inputs(
    execution: RunExecution, source: OutputStore, target: FileOutputStore
) -> None:
    parent = execution.run.parent_run_id
    if parent is None:
        return
    for step in execution.plan.steps:
        for upstream in step.external:
            if source.has(parent, upstream) and not target.has(parent, upstream):
                target.put(parent, upstream, source.get(parent, upstream))
