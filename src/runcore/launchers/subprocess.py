"""Isolated runs: one worker process per run, optionally started ahead of time.

Each run executes in ``python -m runcore worker execute-run RUN_ID --instance CONFIG``: its own
interpreter, memory and CPU, and a crash takes down only that run. With ``warm_workers=N`` the
launcher keeps N workers started ahead (``runcore worker warm``): interpreter up, runcore
imported, storage open, known code locations imported. Each warm worker serves one run only
and is then replaced, so isolation is kept and only the import cost is moved ahead. A warm
worker whose code location changed on disk since it started is retired instead of used.

The launcher watches its workers from one thread: a worker that exits without ending its run
(killed, segfault, ``os._exit``) fails the run with the exit code or signal and the last lines
the worker wrote to stderr, so no run is left STARTING or STARTED without a process. How a
worker is started, signalled and reaped is :mod:`runcore.launchers.processes`; this module is the
pool and the watcher.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from runcore import _faults, _validate
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth
from runcore.launchers.processes import (
    WorkerProcess,
    describe_exit,
    end_run_after_exit,
    process_health,
    signal_worker,
    spawn_run_worker,
    spawn_warm_worker,
)

if TYPE_CHECKING:
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers")

_EXITED_KEPT = 1000  # exit codes remembered for health checks after a worker is reaped


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
        self._running: dict[str, WorkerProcess] = {}
        self._exited: dict[str, tuple[int, int]] = {}  # run id -> (pid, exit code), recent ones
        self._idle: list[WorkerProcess] = []
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
        for worker in idle:
            worker.dismiss()
        for worker in idle:
            worker.retire(grace=5.0)

    # --- workers ----------------------------------------------------------------------------

    def _spawn_warm(self) -> WorkerProcess:
        with self._lock:
            preload = tuple(self._preload)
        return spawn_warm_worker(self._config(), preload, env=self.env)

    def _config(self) -> str:
        if self._config_json is None:
            raise RunLaunchError("SubprocessRunLauncher has not been started")
        return self._config_json

    def _stale(self, worker: WorkerProcess) -> bool:
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

    def _take_warm(self) -> WorkerProcess | None:
        """A usable warm worker, a ready one first; None if there is none."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                ready = [w for w in self._idle if w.check_ready()]
                worker = ready[0] if ready else self._idle[0]
                self._idle.remove(worker)
            if worker.process.poll() is None and not self._stale(worker):
                return worker
            worker.retire()

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
        recorded = False
        if worker is not None:
            # A warm worker's process is known before it has its run: record it first, so
            # that this write does not race the worker's own start (on SQLite a write that
            # finds the file locked waits in a busy loop of 10 ms sleeps and more).
            if not self.context.storage.record_worker(worker.record(run.run_id, attempt)):
                log.warning("run %s: launch attempt %s was given up", run.run_id, attempt)
                worker.dismiss()
                worker.retire(grace=2.0)
                return
            recorded = True
            if not worker.assign(run.run_id, attempt):
                worker.retire()
                worker, recorded = None, False
        if worker is None:
            worker = spawn_run_worker(run.run_id, attempt, self._config(), env=self.env)
        with self._lock:
            self._running[run.run_id] = worker
        self._ensure_watcher()
        _faults.point("after_spawn")
        if not recorded and not self.context.storage.record_worker(
            worker.record(run.run_id, attempt)
        ):
            # The attempt was given up meanwhile (the run went back to the queue or failed):
            # this worker would not be allowed to start it; stop it now.
            log.warning(
                "run %s: launch attempt %s was given up; stopping its worker", run.run_id, attempt
            )
            worker.kill()

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        with self._lock:
            worker = self._running.get(run_id)
        if worker is None:
            return self._terminate_recorded(run_id, force=force)
        return worker.terminate(self.grace_period, force=force)

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
            code = worker.poll()
            if code is None:
                return WorkerHealth.running()
            return WorkerHealth.dead(f"the worker process {worker.pid} {describe_exit(code)}")
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
        for run_id, worker in running:
            code = worker.poll()  # also sends SIGKILL once a terminate's grace is over
            if code is None:
                continue
            with self._lock:
                self._running.pop(run_id, None)
                self._exited[run_id] = (worker.pid, code)
                while len(self._exited) > _EXITED_KEPT:
                    del self._exited[next(iter(self._exited))]
            try:
                end_run_after_exit(self.context.storage, run_id, worker, code)
            finally:
                worker.close()

    def _refill(self) -> None:
        with self._lock:
            missing = 0 if self._closed else self.warm_workers - len(self._idle)
        for _ in range(missing):
            worker = self._spawn_warm()
            with self._lock:
                if self._closed:
                    worker.retire()
                    return
                self._idle.append(worker)
