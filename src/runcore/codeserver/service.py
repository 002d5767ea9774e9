"""The ``CodeServer`` gRPC service: the runs a code server holds, and how it executes them.

``ExecuteRun`` checks a run (it exists, is STARTING, its job is in the served location), holds it
and answers at once; one of ``max_workers`` run worker threads (:class:`RunWorkers`) executes
it, on that thread (``run_mode="thread"``) or in a child worker process it waits on
(``run_mode="process"``, through :mod:`runcore.launchers.processes`). ``CancelRun`` drops a
queued run or cancels an executing one; :meth:`CodeServer.drain` waits for held runs when the
server stops. The process around the service (its token, port and signals) is
:func:`runcore.codeserver.server.serve`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import grpc

from runcore import _validate
from runcore._validate import MAX_SECONDS
from runcore.codeserver.auth import TokenCheck
from runcore.codeserver.client import (
    DRAINING_MESSAGE,
    RemoteRunState,
    Utilization,
    pb2,
    pb2_grpc,
)
from runcore.codeserver.held import HeldRun, RunWorkers
from runcore.errors import ConfigError, RuncoreError, UnknownJobError
from runcore.launchers.base import hostname
from runcore.launchers.processes import end_run_after_exit, spawn_run_worker
from runcore.runs import FailureKind, RunStatus
from runcore.storage.base import DaemonHeartbeat, move_run
from runcore.worker.execution import execute_run

if TYPE_CHECKING:
    from runcore.definitions import Definitions
    from runcore.runs import Run
    from runcore.worker.process import WorkerResources


log = logging.getLogger("runcore.codeserver")

#: Seconds canceled runs get to end after a drain timed out, before the server stops anyway.
CANCEL_WAIT = 10.0
#: Seconds between SIGTERM and SIGKILL for a run's worker process (``--run-mode process``).
PROCESS_GRACE = 5.0

RUN_MODES = ("thread", "process")
#: The ``daemon_type`` of a code server's heartbeat in storage (its utilization).
CODE_SERVER_TYPE = "runcore-code-server"
#: Seconds between a code server's heartbeats.
HEARTBEAT_INTERVAL = 5.0

_PROTO_STATE = {
    RemoteRunState.UNKNOWN: pb2.RUN_STATE_UNKNOWN,
    RemoteRunState.QUEUED: pb2.RUN_STATE_QUEUED,
    RemoteRunState.RUNNING: pb2.RUN_STATE_RUNNING,
}


def _abort(context: Any, code: Any, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's context.abort returned")  # it raises; this satisfies typing


def _checked_run_id(context: Any, run_id: str) -> str:
    """``run_id`` if it is a run id (a lowercase UUID); else the call fails INVALID_ARGUMENT."""
    if not _validate.is_run_id(run_id):
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"run_id {run_id[:80]!r} is not a run id; run ids are lowercase UUIDs",
        )
    return run_id


class CodeServer(pb2_grpc.CodeServerServicer):
    """The ``CodeServer`` gRPC service and the runs it holds.

    ``defs`` are the served location's definitions (loaded by
    :func:`~runcore.codeserver.server.serve`); ``resources`` the storage (started), output store
    and pool settings; ``instance_config`` the config text child workers get in process mode.
    ``token``: the server's token (its interceptor refuses calls without it); ``Ping`` answers
    more than its echo and server id only to a caller that sends it. None: every caller is
    trusted (a server embedded behind its own checks).

    Threads: RPC methods run on gRPC's handler threads (they never execute op code, so calls
    answer while every run worker is busy); runs execute on :class:`RunWorkers` threads; one
    utilization logger ``runcore-codeserver-log`` while ``log_interval > 0``, started by
    :meth:`start_logging`. :meth:`drain` (on the thread of
    :func:`~runcore.codeserver.server.serve`) waits for runs and cancels the rest;
    :meth:`close` stops the workers and the logger.
    """

    def __init__(
        self,
        *,
        location: str,
        defs: Definitions,
        resources: WorkerResources,
        max_workers: int,
        run_mode: str = "thread",
        instance_config: str = "",
        log_interval: float = 10.0,
        log_stream: TextIO | None = None,
        process_grace: float = PROCESS_GRACE,
        token: str | None = None,
    ) -> None:
        if run_mode not in RUN_MODES:
            raise ConfigError(f"run_mode must be one of {', '.join(RUN_MODES)}, got {run_mode!r}")
        self.location = location
        self.defs = defs
        self.resources = resources
        self.max_workers = max_workers
        self.run_mode = run_mode
        self.instance_config = instance_config
        self.log_interval = _validate.number(
            "code server log_interval", log_interval, above=0, maximum=MAX_SECONDS, off=0
        )
        self.process_grace = _validate.delay("code server process_grace", process_grace)
        self.token_check = TokenCheck(token) if token else None
        self.server_id = uuid.uuid4().hex
        self._log_stream = log_stream or sys.stdout
        self._lock = threading.Condition()
        self._held: dict[str, HeldRun] = {}
        self._running = 0
        self._queued = 0
        self._workers = RunWorkers(max_workers, self._work)
        self._draining = False
        self._stop_requested = threading.Event()
        self._deadline = float("inf")
        self._closed = threading.Event()
        self._logger_thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None
        #: ``host:port`` the server listens on, once :meth:`start_heartbeats` knows it.
        self.address: str | None = None
        self._structlog: Any = None

    # --- state ------------------------------------------------------------------------------

    def utilization(self) -> Utilization:
        """The run workers' load now."""
        with self._lock:
            return Utilization(
                max_concurrent_requests=self.max_workers,
                num_running_requests=self._running,
                num_queued_requests=self._queued,
                draining=self._draining,
            )

    def _proto_utilization(self) -> pb2.Utilization:
        util = self.utilization()
        return pb2.Utilization(
            max_concurrent_requests=util.max_concurrent_requests,
            num_running_requests=util.num_running_requests,
            num_queued_requests=util.num_queued_requests,
            draining=util.draining,
        )

    # --- RPCs -------------------------------------------------------------------------------

    def Ping(self, request: pb2.PingRequest, context: Any) -> pb2.PingReply:
        from runcore import __version__

        if self.token_check is not None and not self.token_check.matches(
            context.invocation_metadata()
        ):
            # Open for health checks: say that the server is alive, nothing about it.
            return pb2.PingReply(echo=request.echo, server_id=self.server_id)
        return pb2.PingReply(
            echo=request.echo,
            server_id=self.server_id,
            pid=os.getpid(),
            location=self.location,
            run_mode=self.run_mode,
            runcore_version=__version__,
        )

    def ListJobs(self, request: pb2.ListJobsRequest, context: Any) -> pb2.ListJobsReply:
        return pb2.ListJobsReply(
            location=self.location,
            jobs=[
                pb2.JobInfo(
                    name=job.name,
                    description=job.description or "",
                    op_names=list(job.order),
                    tags=dict(job.tags),
                )
                for job in sorted(self.defs.jobs, key=lambda j: j.name)
            ],
        )

    def GetUtilization(self, request: pb2.GetUtilizationRequest, context: Any) -> pb2.Utilization:
        return self._proto_utilization()

    def GetRunState(self, request: pb2.GetRunStateRequest, context: Any) -> pb2.GetRunStateReply:
        with self._lock:
            held = self._held.get(_checked_run_id(context, request.run_id))
            if held is None:
                return pb2.GetRunStateReply(
                    state=pb2.RUN_STATE_UNKNOWN, pid=0, server_id=self.server_id
                )
            state = held.state
            if self.run_mode == "process":
                pid = held.worker.pid if held.worker is not None else 0
            else:
                pid = os.getpid() if state is RemoteRunState.RUNNING else 0
        return pb2.GetRunStateReply(state=_PROTO_STATE[state], pid=pid, server_id=self.server_id)

    def ExecuteRun(self, request: pb2.ExecuteRunRequest, context: Any) -> pb2.ExecuteRunReply:
        run_id = _checked_run_id(context, request.run_id)
        if not run_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "ExecuteRun needs a run_id")
        self._check_accepting(context, run_id)
        try:
            run = self.resources.storage.get_run(run_id)
        except RuncoreError as exc:
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"the code server could not read run {run_id} from its storage: "
                f"{type(exc).__name__}: {exc}",
            )
        if run is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no run with id {run_id!r} in this code server's storage; is the server "
                "started with the same instance storage (--instance) as the launcher?",
            )
        if run.status is not RunStatus.STARTING:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run_id} is {run.status.value}, not STARTING: ExecuteRun takes a run a "
                "launcher has just moved to STARTING (someone else started, canceled or ended it)",
            )
        try:
            job = self.defs.get_job(run.job_name)
        except UnknownJobError:
            where = (
                f" (the run names code location {run.code_location!r})"
                if run.code_location and run.code_location != self.location
                else ""
            )
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"run {run_id} is of job {run.job_name!r}, which code location "
                f"{self.location!r} served here does not define{where}; its jobs: "
                f"{', '.join(self.defs.job_names) or 'none'}. Send the run to a code server of "
                "its own location",
            )
        held = HeldRun(run=run, job=job if self.run_mode == "thread" else None)
        with self._lock:
            self._check_accepting(context, run_id)
            self._held[run_id] = held
            self._queued += 1
        self._workers.submit(held)
        with self._lock:
            state = held.state
        return pb2.ExecuteRunReply(
            run_id=run_id,
            state=_PROTO_STATE[state],
            utilization=self._proto_utilization(),
            hostname=hostname(),
        )

    def _check_accepting(self, context: Any, run_id: str) -> None:
        if self._draining:
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"{DRAINING_MESSAGE} (shutting down) and accepts no new runs; send run "
                f"{run_id} to another replica",
            )
        held = self._held.get(run_id)
        if held is not None:
            _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"run {run_id} is already held by this code server ({held.state.value})",
            )

    def CancelRun(self, request: pb2.CancelRunRequest, context: Any) -> pb2.CancelRunReply:
        state = self.cancel(_checked_run_id(context, request.run_id))
        return pb2.CancelRunReply(
            found=state is not None, state=_PROTO_STATE[state or RemoteRunState.UNKNOWN]
        )

    def Shutdown(self, request: pb2.ShutdownRequest, context: Any) -> pb2.ShutdownReply:
        with self._lock:
            held = len(self._held)
        timeout = request.timeout_seconds
        if not math.isfinite(timeout) or timeout < 0 or timeout > MAX_SECONDS:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"timeout_seconds must be a finite number of seconds >= 0 and <= {MAX_SECONDS:g}, "
                f"got {timeout!r}",
            )
        self.request_stop(timeout)
        return pb2.ShutdownReply(in_flight_runs=held)

    # --- cancel -----------------------------------------------------------------------------

    def cancel(self, run_id: str) -> RemoteRunState | None:
        """Cancel a held run; returns its state before, or None if the server does not hold it.

        A queued run is dropped and ends CANCELED here; an executing run's cancel is set (in
        process mode its worker gets SIGTERM, then SIGKILL after ``process_grace`` seconds).
        """
        with self._lock:
            held = self._held.get(run_id)
            if held is None:
                return None
            state = held.state
            if state is RemoteRunState.QUEUED:
                held.dropped = True
                self._release(held)
            else:
                held.cancel.set()
                self._signal_child(held)
        if state is RemoteRunState.QUEUED:
            self._cancel_unstarted(held.run, "while it was queued on the code server")
        return state

    def _signal_child(self, held: HeldRun) -> None:
        # Called with the lock held: SIGTERM once, SIGKILL after the grace (see _execute_in_child).
        if held.worker is None or held.term_sent:
            return
        held.worker.terminate(self.process_grace)
        held.term_sent = True

    def _cancel_unstarted(self, run: Run, when: str) -> None:
        storage = self.resources.storage
        move_run(storage, run.run_id, [RunStatus.STARTING], RunStatus.CANCELING, f"canceled {when}")
        move_run(
            storage,
            run.run_id,
            [RunStatus.CANCELING],
            RunStatus.CANCELED,
            f"canceled {when}, before a run worker started it",
        )

    def _release(self, held: HeldRun) -> None:
        # Called with the lock held: the server no longer holds the run.
        if self._held.get(held.run_id) is held:
            del self._held[held.run_id]
            if held.state is RemoteRunState.QUEUED:
                self._queued -= 1
            else:
                self._running -= 1
            self._lock.notify_all()

    # --- executing --------------------------------------------------------------------------

    def _work(self, held: HeldRun) -> None:
        """Execute one held run on this run worker thread (never raises for the run's errors)."""
        with self._lock:
            if held.dropped:
                return
            held.state = RemoteRunState.RUNNING
            self._queued -= 1
            self._running += 1
        try:
            if self.run_mode == "process":
                self._execute_in_child(held)
            else:
                assert held.job is not None
                execute_run(
                    held.run,
                    held.job,
                    storage=self.resources.storage,
                    output_store=self.resources.output_store,
                    cancel=held.cancel,
                    pools=self.resources.pools,
                    heartbeat_interval=self.resources.heartbeat_interval,
                    hooks=self.resources.hooks,
                    capture="thread",
                )
        except BaseException as exc:
            # execute_run ends every run it started (and re-raises SystemExit and the like
            # after failing the run); this guards against a failure of the storage itself, so
            # that no run is left in progress without a worker.
            log.exception("code server: run %s: the run worker failed", held.run_id)
            self._fail(held.run_id, f"the code server's run worker failed: {exc}", exc)
        finally:
            with self._lock:
                self._release(held)

    def _fail(
        self,
        run_id: str,
        message: str,
        exc: BaseException | None = None,
        kind: FailureKind = FailureKind.ENGINE,
    ) -> None:
        """Fail an in-progress run with ``message`` (best effort: storage errors are ignored)."""
        with contextlib.suppress(Exception):
            move_run(
                self.resources.storage,
                run_id,
                [RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING],
                RunStatus.FAILURE,
                message,
                error=exc,
                kind=kind,
            )

    def _execute_in_child(self, held: HeldRun) -> None:
        if held.cancel.is_set():
            self._cancel_unstarted(held.run, "before its worker process was started")
            return
        worker = spawn_run_worker(
            held.run_id,
            held.run.attempt_id or "",
            self.instance_config,
            die_with_parent=True,  # a server killed with -9 takes its runs along
        )
        try:
            with self._lock:
                held.worker = worker
                if held.cancel.is_set():
                    self._signal_child(held)
            code = worker.wait()  # delivers the SIGKILL once a cancel's grace is over
            end_run_after_exit(
                self.resources.storage,
                held.run_id,
                worker,
                code,
                canceled=held.cancel.is_set(),
                whose=f" (of code server pid {os.getpid()})",
            )
        finally:
            worker.close()

    # --- logging ----------------------------------------------------------------------------

    def log_event(self, event: str, **fields: Any) -> None:
        """Write one JSON line (structlog) to the server's log stream."""
        if self._structlog is None:
            import structlog

            self._structlog = structlog.wrap_logger(
                structlog.PrintLogger(file=self._log_stream),
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(),
                ],
            )
        with contextlib.suppress(Exception):  # a closed or broken stream must not stop us
            self._structlog.info(event, server_id=self.server_id, **fields)

    def start_logging(self) -> None:
        """Start the utilization logger (one JSON line every ``log_interval`` seconds)."""
        if self.log_interval <= 0 or self._logger_thread is not None:
            return
        self._logger_thread = threading.Thread(
            target=self._log_loop, name="runcore-codeserver-log", daemon=True
        )
        self._logger_thread.start()

    def _log_loop(self) -> None:
        while not self._closed.wait(self.log_interval):
            self.log_event("code_server_utilization", **self.utilization().as_dict())

    def start_heartbeats(self, address: str, interval: float = HEARTBEAT_INTERVAL) -> None:
        """Write this server's utilization into storage now and every ``interval`` seconds
        (a heartbeat of type :data:`CODE_SERVER_TYPE`, id ``code-server/<address>``), so any
        host can read how busy each replica is (metrics, status pages)."""
        if self._heartbeat_thread is not None:
            return
        self.address = address
        self._heartbeat()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop,
            args=(interval,),
            name="runcore-codeserver-heartbeat",
            daemon=True,
        )
        self._heartbeat_thread.start()

    def _heartbeat_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self._heartbeat()

    def _heartbeat(self, *, stopped: bool = False) -> None:

        try:
            self.resources.storage.add_daemon_heartbeat(
                DaemonHeartbeat(
                    daemon_id=f"code-server/{self.address}",
                    daemon_type=CODE_SERVER_TYPE,
                    timestamp=self.resources.storage.clock(),  # the clock every host shares
                    info={
                        **self.utilization().as_dict(),
                        "draining": self._draining,
                        "address": self.address,
                        "server_id": self.server_id,
                        "host": hostname(),
                        "pid": os.getpid(),
                        "location": self.location,
                        "run_mode": self.run_mode,
                        "interval": HEARTBEAT_INTERVAL,
                        "stopped": stopped,
                    },
                )
            )
        except Exception as exc:  # a missed heartbeat never stops the server
            self.log_event("code_server_heartbeat_failed", error=str(exc))

    # --- stopping ---------------------------------------------------------------------------

    def request_stop(self, timeout: float, *, from_signal: bool = False) -> None:
        """Begin draining: refuse new runs, give held runs ``timeout`` more seconds.

        Safe from any thread; from a signal handler pass ``from_signal=True``, which only
        stores attributes (setting an Event there could deadlock on the Event's own lock, which
        the interrupted main thread may hold). A later request can only shorten the wait.
        """
        self._draining = True
        self._deadline = min(self._deadline, time.monotonic() + timeout)
        if not from_signal:
            self._stop_requested.set()

    def wait_for_stop_request(self, poll: float = 0.1) -> None:
        """Block until :meth:`request_stop` (an RPC, a signal)."""
        while not self._stop_requested.wait(poll):
            if self._draining:  # asked from a signal handler, which sets no Event
                return

    def drain(self) -> bool:
        """Wait for held runs until the stop deadline, then cancel the rest.

        Returns True when every held run ended in time (a clean drain). Runs still executing
        :data:`CANCEL_WAIT` seconds after their cancel (an op that ignores it) are failed with
        the reason, so that none stays in progress once the server is gone.
        """
        with self._lock:
            held = len(self._held)
        self.log_event("code_server_draining", in_flight_runs=held)
        clean = self._wait_for_held(lambda: self._deadline)
        if clean:
            return True
        with self._lock:
            leftovers = list(self._held)
        for run_id in leftovers:
            self.cancel(run_id)
        cancel_deadline = time.monotonic() + max(CANCEL_WAIT, self.process_grace + 1.0)
        if not self._wait_for_held(lambda: cancel_deadline):
            with self._lock:
                stuck = list(self._held.values())
            for item in stuck:
                self._fail(
                    item.run_id,
                    f"the code server (pid {os.getpid()}) stopped while the run was executing: "
                    "the drain timed out and the run did not stop on cancel",
                    kind=FailureKind.WORKER_DIED,
                )
        self.log_event("code_server_drain_timed_out", canceled_runs=len(leftovers))
        return False

    def _wait_for_held(self, deadline: Callable[[], float]) -> bool:
        while True:
            with self._lock:
                if not self._held:
                    return True
                remaining = deadline() - time.monotonic()
                if remaining <= 0:
                    return False
                # Short waits: a signal handler may shorten the deadline without notifying.
                self._lock.wait(min(remaining, 0.1))

    def close(self) -> None:
        """Stop the run workers and the logger (after :meth:`drain`)."""
        self._closed.set()
        self._workers.stop()
        if self._logger_thread is not None:
            self._logger_thread.join(timeout=5)
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
            self._heartbeat(stopped=True)
