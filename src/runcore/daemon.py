"""The daemon: background duties over one instance.

Duties: **dequeue** (start queued runs when the limits allow; only when the instance's
coordinator queues), **monitor** (run monitoring: stuck, dead and overlong runs, leaked slots;
see :mod:`runcore.monitoring`), **retries** (run retries by policy; see :mod:`runcore.retries`),
and a **heartbeat** in storage, so ``runcore daemon status`` and ``Instance.explain_queued``
can tell whether a daemon is alive.

Tests call :meth:`Daemon.run_once`, which performs exactly one pass of each enabled duty in the
calling thread; the clock is injectable so that time can be stepped instead of slept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import attrs

from runcore import _validate
from runcore._log import log_event
from runcore.errors import InstanceClosedError, StorageError
from runcore.launchers.base import hostname
from runcore.storage.base import DaemonHeartbeat

if TYPE_CHECKING:
    from runcore.coordinators.queued import DequeueResult
    from runcore.instance import Instance
    from runcore.monitoring import MonitorPass, RunMonitor
    from runcore.retries import RetryPass, RunRetrier
    from runcore.storage.base import InstanceStorage

log = logging.getLogger("runcore.daemon")

DAEMON_TYPE = "runcore-daemon"


@attrs.frozen
class DaemonPass:
    """What one :meth:`Daemon.run_once` did."""

    dequeue: DequeueResult | None
    monitor: MonitorPass | None = None
    retries: RetryPass | None = None


@attrs.frozen
class DaemonStatus:
    """A daemon's latest heartbeat and whether it is recent enough to count as alive."""

    heartbeat: DaemonHeartbeat
    alive: bool
    age_seconds: float


def daemon_statuses(
    storage: InstanceStorage, *, now: float | None = None, max_age: float | None = None
) -> list[DaemonStatus]:
    """Every daemon that has sent a heartbeat, newest first, with an alive verdict.

    A daemon is alive if its last heartbeat is younger than ``max_age`` (default: three of
    its own heartbeat intervals, as it recorded them) and it did not record that it stopped.
    """
    current = time.time() if now is None else now
    out = []
    for beat in storage.get_daemon_heartbeats():
        if beat.daemon_type != DAEMON_TYPE:
            continue
        age = current - beat.timestamp
        limit = max_age if max_age is not None else 3 * float(beat.info.get("interval", 5.0))
        alive = age <= limit and not beat.info.get("stopped", False)
        out.append(DaemonStatus(heartbeat=beat, alive=alive, age_seconds=age))
    return sorted(out, key=lambda s: s.age_seconds)


def _log_monitor(result: MonitorPass) -> None:
    for event, run_ids in (
        ("monitor_start_timeout", result.start_timeouts),
        ("monitor_dead_worker", result.dead_workers),
        ("monitor_max_runtime", result.max_runtimes),
        ("monitor_forced_cancel", result.forced_cancels),
        ("monitor_abandoned_launch", result.abandoned_launches),
    ):
        for run_id in run_ids:
            log_event(log, event, logging.WARNING, run_id=run_id)
    if result.slots_reclaimed:
        log_event(log, "monitor_slots_reclaimed", logging.WARNING, slots=result.slots_reclaimed)


class Daemon:
    """Background duties over ``instance``; use as a context manager or ``start``/``stop``.

    Duties: **dequeue** (when the coordinator queues), **monitor** (``run_monitoring``, on
    by default) and **retries** (``run_retries``, off by default); their intervals default to
    the config's ``poll_interval_seconds`` (dequeue: ``dequeue_interval``).

    Threads: ``start()`` starts one thread per enabled duty (``runcore-daemon-dequeue``,
    ``-monitor``, ``-retries``) and one for heartbeats (``runcore-daemon-heartbeat``), all
    daemonic; ``stop()`` (or leaving the ``with`` block) signals them and joins them. The
    instance stays open: its owner closes it.
    """

    def __init__(
        self,
        instance: Instance,
        *,
        dequeue_interval: float = 0.5,
        heartbeat_interval: float = 5.0,
        monitor_interval: float | None = None,
        retry_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        daemon_id: str | None = None,
    ) -> None:
        from runcore.config import InstanceConfig

        cfg = instance.config or InstanceConfig()
        poll = cfg.run_monitoring.poll_interval_seconds
        monitor_interval = poll if monitor_interval is None else monitor_interval
        retry_interval = poll if retry_interval is None else retry_interval
        dequeue_interval = _validate.interval("Daemon(dequeue_interval=...)", dequeue_interval)
        heartbeat_interval = _validate.interval(
            "Daemon(heartbeat_interval=...)", heartbeat_interval
        )
        monitor_interval = _validate.interval("Daemon(monitor_interval=...)", monitor_interval)
        retry_interval = _validate.interval("Daemon(retry_interval=...)", retry_interval)
        self.instance = instance
        self.dequeue_interval = dequeue_interval
        self.monitor_interval = monitor_interval
        self.retry_interval = retry_interval
        self.monitoring = cfg.run_monitoring
        self.retrying = cfg.run_retries
        self._monitor: RunMonitor | None = None
        self._retrier: RunRetrier | None = None
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        if daemon_id is None:
            import uuid

            daemon_id = f"{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.daemon_id = daemon_id
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self._finished_since: float | None = None
        self._finished_seen: dict[str, None] = {}
        self._last_error: str | None = None
        #: Set when the storage stopped being the one opened (file deleted, replaced or
        #: unreadable): the duties stop and :meth:`stop` re-raises it.
        self.fatal: StorageError | None = None

    def __repr__(self) -> str:
        return f"Daemon(daemon_id={self.daemon_id!r}, running={self.is_running})"

    # --- duties -----------------------------------------------------------------------------

    @property
    def dequeues(self) -> bool:
        """Whether the instance's coordinator queues runs (so the dequeue duty is on)."""
        from runcore.coordinators.queued import QueuedRunCoordinator

        return isinstance(self.instance.run_coordinator, QueuedRunCoordinator)

    def dequeue_once(self) -> DequeueResult | None:
        """One dequeue pass (None when the coordinator does not queue)."""
        from runcore.coordinators.queued import QueuedRunCoordinator

        coordinator = self.instance.run_coordinator
        if not isinstance(coordinator, QueuedRunCoordinator):
            return None
        self.instance.ensure_started()
        return coordinator.dequeue_pass()  # logs each admission and launch

    def monitor_once(self) -> MonitorPass | None:
        """One monitoring pass (None when ``run_monitoring.enabled`` is false)."""
        if not self.monitoring.enabled:
            return None
        self.instance.ensure_started()
        if self._monitor is None:
            from runcore.monitoring import RunMonitor

            self._monitor = RunMonitor(
                self.instance.storage,
                self.instance.launcher,
                self.monitoring,
                self.clock,
                launch_grace=2 * self.monitor_interval,
                requeue=self.dequeues,
            )
        result = self._monitor.run_once()
        _log_monitor(result)
        return result

    def retry_once(self) -> RetryPass | None:
        """One run-retry pass (None when ``run_retries.enabled`` is false)."""
        if not self.retrying.enabled:
            return None
        self.instance.ensure_started()
        if self._retrier is None:
            from runcore.retries import RunRetrier

            self._retrier = RunRetrier(self.instance, self.retrying, self.clock)
        result = self._retrier.run_once()
        for run_id in result.submitted:
            log_event(log, "run_retry_submitted", run_id=run_id)
        for failed, why in result.skipped:
            log_event(log, "run_retry_skipped", run_id=failed, reason=why)
        return result

    def finishes_once(self) -> list[str]:
        """Log each run that ended since the last call (one ``run_finished`` line each);
        returns their ids. Does nothing (and reads nothing) unless INFO logging is on."""
        if not log.isEnabledFor(logging.INFO):
            return []
        from runcore.runs import RunsFilter, RunStatus

        self.instance.ensure_started()
        now = time.time()
        since = self._finished_since if self._finished_since is not None else now
        records = self.instance.storage.get_run_records(
            RunsFilter(
                statuses=[RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CANCELED],
                updated_after=since - 1.0,  # clocks of writers differ a little
            ),
            limit=1000,
            ascending=True,
        )
        done = []
        for record in records:
            run = record.run
            if run.run_id in self._finished_seen:
                continue
            self._finished_seen[run.run_id] = None
            done.append(run.run_id)
            took = (
                round(run.ended_at - run.started_at, 3)
                if run.ended_at is not None and run.started_at is not None
                else None
            )
            log_event(
                log,
                "run_finished",
                logging.INFO if run.status is RunStatus.SUCCESS else logging.WARNING,
                run_id=run.run_id,
                job=run.job_name,
                status=run.status.value,
                duration_s=took,
                reason=run.failure_reason if run.status is not RunStatus.SUCCESS else None,
            )
        while len(self._finished_seen) > 10_000:
            del self._finished_seen[next(iter(self._finished_seen))]
        self._finished_since = now
        return done

    @property
    def duties(self) -> list[str]:
        """The duties this daemon performs."""
        enabled = [
            ("dequeue", self.dequeues),
            ("monitor", self.monitoring.enabled),
            ("retries", self.retrying.enabled),
        ]
        return [name for name, on in enabled if on]

    def heartbeat(self, *, stopped: bool = False) -> None:
        """Record that this daemon is alive (or, with ``stopped``, that it has stopped)."""
        self.instance.ensure_started()
        self.instance.storage.add_daemon_heartbeat(
            DaemonHeartbeat(
                daemon_id=self.daemon_id,
                daemon_type=DAEMON_TYPE,
                timestamp=self.clock(),
                info={
                    "pid": os.getpid(),
                    "host": hostname(),
                    "interval": self.heartbeat_interval,
                    "duties": self.duties,
                    "last_error": self._last_error,
                    "stopped": stopped,
                },
            )
        )

    def run_once(self) -> DaemonPass:
        """Exactly one pass of each enabled duty, synchronously, then a heartbeat.

        Raises :class:`~runcore.errors.StorageError` first if the storage is no longer the one
        opened (see :meth:`~runcore.storage.base.InstanceStorage.check_identity`).
        """
        self.instance.ensure_started()
        self.instance.storage.check_identity()
        result = DaemonPass(
            dequeue=self.dequeue_once(), monitor=self.monitor_once(), retries=self.retry_once()
        )
        self.heartbeat()
        return result

    # --- threads ----------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the background threads are running."""
        return any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the background threads. Raises RuntimeError if already running."""
        if self.is_running:
            raise RuntimeError("this Daemon is already running")
        self.instance.ensure_started()
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._loop,
                args=("heartbeat", self.heartbeat, self.heartbeat_interval),
                name="runcore-daemon-heartbeat",
                daemon=True,
            )
        ]
        if self.dequeues:
            self._threads.append(
                threading.Thread(
                    target=self._dequeue_loop, name="runcore-daemon-dequeue", daemon=True
                )
            )
        if log.isEnabledFor(logging.INFO):
            self.finishes_once()  # from now on
            self._threads.append(
                threading.Thread(
                    target=self._loop,
                    args=("finishes", self.finishes_once, self.dequeue_interval),
                    name="runcore-daemon-finishes",
                    daemon=True,
                )
            )
        for duty, fn, interval in (
            ("monitor", self.monitor_once, self.monitor_interval),
            ("retries", self.retry_once, self.retry_interval),
        ):
            if duty in self.duties:
                self._threads.append(
                    threading.Thread(
                        target=self._loop,
                        args=(duty, fn, interval),
                        name=f"runcore-daemon-{duty}",
                        daemon=True,
                    )
                )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the threads and wait up to ``timeout`` seconds for them to finish.

        Re-raises the :class:`~runcore.errors.StorageError` that stopped the duties, if the
        storage stopped being the one opened (see :attr:`fatal`).
        """
        timeout = _validate.delay("Daemon.stop(timeout=...)", timeout)
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        if self.fatal is not None:
            raise self.fatal  # no "stopped" heartbeat: that storage is not ours any more
        with contextlib.suppress(Exception):
            self.heartbeat(stopped=True)

    @property
    def stopped_by_error(self) -> bool:
        """Whether the duties stopped by themselves, on a storage that is no longer ours."""
        return self.fatal is not None

    def _storage_ok(self) -> bool:
        """Check the storage is still the one opened; on the first failure, stop every duty."""
        try:
            self.instance.storage.check_identity()
        except StorageError as exc:
            if self.fatal is None:
                self.fatal = exc
                self._last_error = f"storage: {exc}"
                log.error("runcore daemon: %s; stopping every duty", exc)
            self._stop.set()
            return False
        return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, duty: str, exc: BaseException) -> None:
        self.errors.append(exc)
        del self.errors[:-20]
        self._last_error = f"{duty}: {type(exc).__name__}: {exc}"
        log.exception("runcore daemon duty %s failed; it goes on", duty)

    def _loop(self, duty: str, fn: Callable[[], Any], interval: float) -> None:
        while not self._stop.is_set() and self._storage_ok():
            try:
                fn()
            except InstanceClosedError:
                return
            except Exception as exc:
                self._record(duty, exc)
            self._stop.wait(interval)

    def _dequeue_loop(self) -> None:
        while not self._stop.is_set() and self._storage_ok():
            busy = False
            try:
                result = self.dequeue_once()
                busy = result is not None and bool(result.launched or result.lost_races)
            except InstanceClosedError:
                return
            except Exception as exc:
                self._record("dequeue", exc)
            # A pass that started runs may have left more startable ones: go again at once.
            self._stop.wait(0 if busy else self.dequeue_interval)
