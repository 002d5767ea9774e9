"""Isolated runs: one worker process per run, optionally started ahead of time.

Each run executes in ``python -m runcore worker execute-run RUN_ID --instance CONFIG``: its own
interpreter, memory and CPU, and a crash takes down only that run. With ``warm_workers=N`` the
launcher keeps N workers started ahead (``runcore worker warm``): interpreter up, runcore
imported, storage open, known code locations imported. Each warm worker serves one run only
and is then replaced, so isolation is kept and only the import cost is moved ahead. A warm
worker whose code location changed on disk since it started is retired instead of used.

The launcher watches its workers from one thread: a worker that exits without ending its run
(killed, segfault, ``os._exit``) fails the run with the exit code or signal and the last lines
the worker wrote to stderr, so no run is left STARTING or STARTED without a process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING

import attrs

from runcore import _faults, _validate
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth, hostname
from runcore.launchers.processes import PROCESS, process_handle, process_health, signal_worker
from runcore.runs import IN_PROGRESS_STATUSES, FailureKind, RunStatus
from runcore.storage.base import WorkerRecord, move_run

if TYPE_CHECKING:
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers")

_EXITED_KEPT = 1000  # exit codes remembered for health checks after a worker is reaped


def describe_exit(code: int | None) -> str:
    """A worker's exit status in words."""
    from runcore.worker.process import EXIT_MEANINGS

    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    meaning = EXIT_MEANINGS.get(code)
    return f"exited with code {code}" + (f" ({meaning})" if meaning else "")


@attrs.define(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    started: float
    run_id: str | None = None
    preloaded: tuple[str, ...] = ()
    terminate_at: float | None = None  # when SIGKILL follows an unanswered SIGTERM
    ready_fd: int | None = None  # a warm worker writes "ready" here once it is ready
    ready: bool = False

    def check_ready(self) -> bool:
        """Whether a warm worker has said it is ready (reads its ready pipe, never blocks)."""
        if self.ready or self.ready_fd is None:
            return self.ready
        try:
            data = os.read(self.ready_fd, 64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        self.ready = data.startswith(b"ready")
        self.close_ready()
        return self.ready

    def close_ready(self) -> None:
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    def stderr_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - limit))
            return self.stderr.read().decode(errors="replace").strip()
        return ""


def _location_files(location: str) -> list[str]:
    """The files whose change makes a warm worker that imported ``location`` stale."""
    target = location.rpartition(":")[0] or location
    if target.endswith(".py") or "/" in target:
        return [os.path.abspath(target)]
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return []
    if os.path.basename(spec.origin) == "__init__.py":
        folder = os.path.dirname(spec.origin)
        return [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py")]
    return [spec.origin]


class SubprocessRunLauncher(RunLauncher):
    """Runs each run in its own worker process (isolated), tracked by pid.

    ``warm_workers``: workers kept started ahead (0: start one per run, cold).
    ``grace_period``: seconds between SIGTERM and SIGKILL on terminate.
    ``preload``: code locations warm workers import ahead (those of launched runs are added).
    ``env``: extra environment variables for workers.

    Threads: one watcher (``runcore-subprocess-watcher``), started on first use and stopped
    by :meth:`close`. Runs still executing at ``close()`` keep running in their processes.
    """

    records_workers = True

    def __init__(
        self,
        warm_workers: int = 0,
        grace_period: float = 5.0,
        preload: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        poll_interval: float = 0.02,
    ) -> None:
        if isinstance(warm_workers, bool) or not isinstance(warm_workers, int) or warm_workers < 0:
            raise ConfigError(
                f"SubprocessRunLauncher warm_workers must be an int >= 0, got {warm_workers!r}"
            )
        self.warm_workers = warm_workers
        self.grace_period = _validate.delay("SubprocessRunLauncher(grace_period=...)", grace_period)
        self.poll_interval = _validate.interval(
            "SubprocessRunLauncher(poll_interval=...)", poll_interval
        )
        self.env = dict(env or {})
        self._preload: list[str] = list(preload)
        self._running: dict[str, _Worker] = {}
        self._exited: dict[str, tuple[int, int]] = {}  # run id -> (pid, exit code), recent ones
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._closed = False
        self._config_json: str | None = None
        self._mtimes: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"SubprocessRunLauncher(warm_workers={self.warm_workers})"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, context: LaunchContext) -> None:
        super().start(context)
        self._config_json = json.dumps(dict(context.instance_config))
        if self.warm_workers:
            self._ensure_watcher()

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None or self._closed:
                return
            self._watcher = threading.Thread(
                target=self._watch, name="runcore-subprocess-watcher", daemon=True
            )
            self._watcher.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        for worker in idle:  # retire: an empty line on stdin makes a warm worker exit
            with contextlib.suppress(OSError):
                assert worker.process.stdin is not None
                worker.process.stdin.close()
        for worker in idle:
            try:
                worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
            worker.stderr.close()

    # --- workers ----------------------------------------------------------------------------

    def _worker_env(self) -> dict[str, str]:
        from runcore.worker.process import worker_env

        return worker_env(self.env)

    def _spawn(self, args: list[str], *, warm: bool) -> _Worker:
        # Kept open for the worker's life (closed when it is reaped), so no context manager.
        stderr = tempfile.TemporaryFile(prefix="runcore-worker-")  # noqa: SIM115
        ready_read: int | None = None
        pass_fds: tuple[int, ...] = ()
        if warm:  # a pipe on which the warm worker says it is ready, then closes
            ready_read, ready_write = os.pipe()
            os.set_blocking(ready_read, False)
            pass_fds = (ready_write,)
            args = [*args, "--ready-fd", str(ready_write)]
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "runcore", "worker", *args],
                stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self._worker_env(),
                start_new_session=True,  # a Ctrl-C in the host does not reach the runs
                pass_fds=pass_fds,
            )
        except OSError as exc:
            stderr.close()
            if ready_read is not None:
                os.close(ready_read)
            raise RunLaunchError(f"cannot start a worker process: {exc}") from exc
        finally:
            for fd in pass_fds:
                os.close(fd)
        return _Worker(process=process, stderr=stderr, started=time.time(), ready_fd=ready_read)

    def _spawn_warm(self) -> _Worker:
        with self._lock:
            preload = tuple(self._preload)
        args = ["warm", "--instance", self._config()]
        for location in preload:
            args += ["--preload", location]
        worker = self._spawn(args, warm=True)
        worker.preloaded = preload
        return worker

    def _config(self) -> str:
        if self._config_json is None:
            raise RunLaunchError("SubprocessRunLauncher has not been started")
        return self._config_json

    def _stale(self, worker: _Worker) -> bool:
        for location in worker.preloaded:
            for path in _location_files(location):
                with contextlib.suppress(OSError):
                    if os.stat(path).st_mtime > worker.started:
                        return True
        return False

    @property
    def ready_workers(self) -> int:
        """How many warm workers are ready now (imports done, waiting for a run)."""
        with self._lock:
            return sum(1 for worker in self._idle if worker.check_ready())

    def _take_warm(self) -> _Worker | None:
        """A usable warm worker, a ready one first; None if there is none."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                ready = [w for w in self._idle if w.check_ready()]
                worker = ready[0] if ready else self._idle[0]
                self._idle.remove(worker)
            if worker.process.poll() is None and not self._stale(worker):
                worker.close_ready()
                return worker
            self._retire(worker)

    @staticmethod
    def _retire(worker: _Worker) -> None:
        worker.close_ready()
        with contextlib.suppress(OSError):
            worker.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=5)
        worker.stderr.close()

    # --- the interface ----------------------------------------------------------------------

    def launch_run(self, run: Run) -> None:
        if run.code_location is None:
            raise RunLaunchError(
                f"run {run.run_id}: job {run.job_name!r} has no code location, so no worker "
                "process can import it (was it defined in an interactive session or built "
                "inside a function?). Define it at the top level of a module or file, pass "
                "code_location='pkg.module:defs' to submit_run, or tag the run "
                "runcore/isolation: non_isolated to run it on a thread of this process"
            )
        with self._lock:
            if self._closed:
                raise RunLaunchError(f"cannot launch run {run.run_id}: the launcher is closed")
            if run.code_location not in self._preload:
                self._preload.append(run.code_location)
        attempt = run.attempt_id or ""
        worker = self._take_warm() if self.warm_workers else None
        if worker is not None:
            assert worker.process.stdin is not None
            try:
                worker.process.stdin.write(f"{run.run_id} {attempt}\n".encode())
                worker.process.stdin.close()
            except OSError:
                self._retire(worker)
                worker = None
        if worker is None:
            args = ["execute-run", run.run_id, "--instance", self._config()]
            if attempt:
                args += ["--attempt", attempt]
            worker = self._spawn(args, warm=False)
        worker.run_id = run.run_id
        with self._lock:
            self._running[run.run_id] = worker
        self._ensure_watcher()
        _faults.point("after_spawn")
        record = WorkerRecord(
            run_id=run.run_id,
            attempt_id=attempt,
            kind=PROCESS,
            host=hostname(),
            handle=process_handle(worker.process.pid),
            started_at=worker.started,
        )
        if not self.context.storage.record_worker(record):
            # The attempt was given up meanwhile (the run went back to the queue or failed):
            # this worker would not be allowed to start it; stop it now.
            log.warning(
                "run %s: launch attempt %s was given up; stopping its worker", run.run_id, attempt
            )
            with contextlib.suppress(OSError):
                worker.process.kill()

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        with self._lock:
            worker = self._running.get(run_id)
        if worker is None:
            return self._terminate_recorded(run_id, force=force)
        if worker.process.poll() is not None:
            return False
        with contextlib.suppress(OSError):  # our own child: its pid stays ours until reaped
            worker.process.send_signal(signal.SIGKILL if force else signal.SIGTERM)
        if not force:
            worker.terminate_at = time.monotonic() + self.grace_period
        return True

    def _terminate_recorded(self, run_id: str, *, force: bool) -> bool:
        """Signal a worker process this launcher did not start (another process's), named by
        the run's worker record and checked by identity (:mod:`runcore.launchers.processes`);
        the worker's own handler cancels the run on SIGTERM."""
        record = self.context.storage.get_worker_record(run_id)
        if record is None:
            return False
        return signal_worker(record, signal.SIGKILL if force else signal.SIGTERM)

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        return self.check_workers_health([run])[run.run_id]

    def check_workers_health(self, runs: Sequence[Run]) -> dict[str, WorkerHealth]:
        out: dict[str, WorkerHealth] = {}
        others: list[Run] = []
        for run in runs:
            local = self._own_health(run.run_id)
            if local is None:
                others.append(run)
            else:
                out[run.run_id] = local
        if others:  # workers another process started: one read for all their records
            records = self.context.storage.get_worker_records([run.run_id for run in others])
            for run in others:
                record = records.get(run.run_id)
                if record is None or record.attempt_id != (run.attempt_id or ""):
                    out[run.run_id] = WorkerHealth.unknown(
                        "no worker process is recorded for the run's attempt"
                    )
                else:
                    out[run.run_id] = process_health(record)
        return out

    def _own_health(self, run_id: str) -> WorkerHealth | None:
        """The health of a worker this launcher started (None: not one of ours)."""
        with self._lock:
            worker = self._running.get(run_id)
            exited = self._exited.get(run_id)
        if worker is not None:
            code = worker.process.poll()
            if code is None:
                return WorkerHealth.running()
            return WorkerHealth.dead(
                f"the worker process {worker.process.pid} {describe_exit(code)}"
            )
        if exited is not None:
            return WorkerHealth.dead(f"the worker process {exited[0]} {describe_exit(exited[1])}")
        return None

    # --- the watcher ------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._reap()
                self._refill()
            except Exception:
                log.exception("runcore subprocess watcher: a pass failed; it goes on")

    def _reap(self) -> None:
        with self._lock:
            running = list(self._running.items())
        now = time.monotonic()
        for run_id, worker in running:
            code = worker.process.poll()
            if code is None:
                if worker.terminate_at is not None and now >= worker.terminate_at:
                    with contextlib.suppress(OSError):
                        worker.process.kill()
                    worker.terminate_at = None
                continue
            with self._lock:
                self._running.pop(run_id, None)
                self._exited[run_id] = (worker.process.pid, code)
                while len(self._exited) > _EXITED_KEPT:
                    del self._exited[next(iter(self._exited))]
            self._after_exit(run_id, worker, code)

    def _after_exit(self, run_id: str, worker: _Worker, code: int) -> None:
        storage = self.context.storage
        run = storage.get_run(run_id)
        if run is not None and run.status in IN_PROGRESS_STATUSES:
            reason = f"the run's worker process {worker.process.pid} {describe_exit(code)}"
            tail = worker.stderr_tail()
            if tail:
                reason += f"; its last output:\n{tail}"
            if run.status is RunStatus.CANCELING:
                move_run(
                    storage,
                    run_id,
                    [RunStatus.CANCELING],
                    RunStatus.CANCELED,
                    f"canceled: {reason}",
                )
            else:
                move_run(
                    storage,
                    run_id,
                    [RunStatus.STARTING, RunStatus.STARTED],
                    RunStatus.FAILURE,
                    reason,
                    kind=FailureKind.WORKER_DIED,
                    data={"exit_code": code},
                )
        worker.stderr.close()

    def _refill(self) -> None:
        with self._lock:
            missing = 0 if self._closed else self.warm_workers - len(self._idle)
        for _ in range(missing):
            worker = self._spawn_warm()
            with self._lock:
                if self._closed:
                    self._retire(worker)
                    return
                self._idle.append(worker)
