"""Non-isolated runs on a pool of threads of this process."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING

from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth, hostname
from runcore.launchers.processes import THREAD, process_handle, process_health
from runcore.runs import FailureKind, RunsFilter, RunStatus
from runcore.storage.base import WorkerRecord, move_run
from runcore.worker.cancel import CancelEvent
from runcore.worker.execution import execute_run

if TYPE_CHECKING:
    import concurrent.futures

    from runcore.runs import Run

log = logging.getLogger("runcore.launchers")

_LAUNCHED_KEPT = 10_000


class ThreadPoolRunLauncher(RunLauncher):
    """Executes each run on one of ``max_workers`` threads of this process.

    Fast to start (no process, no import), but runs share this process's memory and CPU, and a
    run that crashes the interpreter takes the host with it. Runs beyond ``max_workers`` wait
    for a free thread in STARTING.

    Threads: a ``concurrent.futures`` pool of up to ``max_workers`` threads named
    ``runcore-run-*``, created on first launch; on storage other processes share, one more
    (``runcore-run-cancel-watcher``) that applies cancels made by other processes (they move
    the run to CANCELING; it sets the run's cancel). :meth:`close` stops and joins them.
    """

    records_workers = True

    def __init__(self, max_workers: int = 8) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(
                f"ThreadPoolRunLauncher max_workers must be an int >= 1, got {max_workers!r}"
            )
        self.max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._active: dict[str, CancelEvent] = {}
        self._launched: dict[str, None] = {}  # runs launched here, recent ones (ordered set)
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.cancel_poll_interval = 0.25
        self._closed = False
        self._own_handle: dict[str, object] | None = None

    def __repr__(self) -> str:
        return f"ThreadPoolRunLauncher(max_workers={self.max_workers})"

    def start(self, context: LaunchContext) -> None:
        super().start(context)

    def launch_run(self, run: Run) -> None:
        context = self.context
        with self._lock:
            if self._closed:
                raise RunLaunchError(f"cannot launch run {run.run_id}: the launcher is closed")
            if self._pool is None:
                import concurrent.futures

                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_workers, thread_name_prefix="runcore-run"
                )
            cancel = CancelEvent()
            self._active[run.run_id] = cancel
            self._launched[run.run_id] = None
            while len(self._launched) > _LAUNCHED_KEPT:
                del self._launched[next(iter(self._launched))]
        # Recorded before the run can start, so that another process (a daemon) can tell
        # whether the process holding the run's thread is alive.
        record = WorkerRecord(
            run_id=run.run_id,
            attempt_id=run.attempt_id or "",
            kind=THREAD,
            host=hostname(),
            handle=self._handle(),
        )
        if not context.storage.record_worker(record):
            with self._lock:  # the attempt was given up meanwhile: nothing to execute
                self._active.pop(run.run_id, None)
            log.warning("run %s: launch attempt %s was given up", run.run_id, run.attempt_id)
            return
        if context.storage.shareable:
            self._ensure_watcher()
        with self._lock:
            self._pool.submit(self._execute, context, run, cancel)

    def _handle(self) -> dict[str, object]:
        if self._own_handle is None:
            self._own_handle = process_handle(os.getpid())
        return dict(self._own_handle)

    def _execute(self, context: LaunchContext, run: Run, cancel: CancelEvent) -> None:
        try:
            try:
                job = context.resolve_job(run)
            except Exception as exc:
                move_run(
                    context.storage,
                    run.run_id,
                    [RunStatus.STARTING],
                    RunStatus.FAILURE,
                    f"the run's job could not be loaded: {type(exc).__name__}: {exc}",
                    error=exc,
                    kind=FailureKind.LAUNCH_FAILURE,
                )
                return
            execute_run(
                run,
                job,
                storage=context.storage,
                output_store=context.output_store,
                cancel=cancel,
                pools=context.pools,
                heartbeat_interval=context.heartbeat_interval,
                hooks=context.hooks,
                capture="thread",
            )
        except Exception as exc:
            # execute_run ends every run it started; this is the last guard, for a failure of
            # the storage itself, so that no run is left in progress without a worker.
            log.exception("run %s: the run thread failed", run.run_id)
            with contextlib.suppress(Exception):
                move_run(
                    context.storage,
                    run.run_id,
                    [RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING],
                    RunStatus.FAILURE,
                    f"the run's thread failed: {type(exc).__name__}: {exc}",
                    error=exc,
                    kind=FailureKind.ENGINE,
                )
        finally:
            with self._lock:
                self._active.pop(run.run_id, None)

    def _ensure_watcher(self) -> None:
        with self._lock:
            if self._watcher is not None or self._closed:
                return
            self._watcher = threading.Thread(
                target=self._watch, name="runcore-run-cancel-watcher", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Cancel runs that another process moved to CANCELING (it cannot reach our threads)."""
        while not self._stop.wait(self.cancel_poll_interval):
            with self._lock:
                active = list(self._active)
            if not active:
                continue
            try:
                records = self.context.storage.get_run_records(
                    RunsFilter(run_ids=active, statuses=[RunStatus.CANCELING])
                )
            except Exception:
                log.exception("runcore thread launcher: the cancel watcher's read failed")
                continue
            for record in records:
                self.terminate(record.run.run_id)

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        with self._lock:
            cancel = self._active.get(run_id)
        if cancel is None:
            return False
        cancel.set()
        return True

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        with self._lock:
            if run.run_id in self._active:
                return WorkerHealth.running()
            launched_here = run.run_id in self._launched
        current = self.context.storage.get_run(run.run_id) or run
        if current.status.is_terminal:
            return WorkerHealth.unknown(f"the run has ended {current.status.value}")
        if launched_here:
            return WorkerHealth.dead("the run's thread ended without finishing the run")
        record = self.context.storage.get_worker_record(run.run_id)
        if record is None or record.kind != THREAD:
            return WorkerHealth.unknown("no thread of a process is recorded for the run")
        if record.host == hostname() and record.handle == self._handle():
            return WorkerHealth.unknown("another launcher of this process holds the run")
        return process_health(record, "process running the run's thread")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # the watcher still applies cancels meanwhile
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
