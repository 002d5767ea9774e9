"""The daemon: background duties over one instance.

Duties: **dequeue** (start queued runs when the limits allow; only when the instance's
coordinator queues), **monitor** (run monitoring: stuck, dead and overlong runs, leaked slots;
see :mod:`runcore.daemon.monitoring`), **retries** (run retries by policy; see
:mod:`runcore.daemon.retries`), each a :class:`~runcore.daemon.base.Duty` on a thread of its own,
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
from runcore.config import InstanceConfig
from runcore.coordinators.base import QueuingCoordinator
from runcore.daemon.base import Duty
from runcore.errors import ConfigError, InstanceClosedError, StorageError
from runcore.launchers.base import hostname
from runcore.runs import RunsFilter, RunStatus
from runcore.storage.base import DaemonHeartbeat, StorageNotifier

if TYPE_CHECKING:
    from runcore.coordinators.queued import DequeueResult
    from runcore.daemon.monitoring import MonitorPass
    from runcore.daemon.retries import RetryPass
    from runcore.instance import Instance
    from runcore.storage.base import InstanceStorage

log = logging.getLogger("runcore.daemon")

DAEMON_TYPE = "runcore-daemon"
#: The ``daemon_type`` of a duty's own heartbeat (``daemon_id`` ``<daemon id>/<duty name>``).
DUTY_TYPE = "runcore-daemon-duty"


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


@attrs.frozen
class DutyStatus:
    """A duty's latest heartbeat: which daemon, which duty, and how long ago."""

    daemon_id: str
    duty: str
    heartbeat: DaemonHeartbeat
    alive: bool
    age_seconds: float


def duty_statuses(storage: InstanceStorage, *, now: float | None = None) -> list[DutyStatus]:
    """Every duty heartbeat, by daemon then duty; alive if younger than three times the
    larger of the duty's interval and its daemon's heartbeat interval, as recorded."""
    current = storage.clock() if now is None else now
    out = []
    for beat in storage.get_daemon_heartbeats():
        if beat.daemon_type != DUTY_TYPE:
            continue
        age = current - beat.timestamp
        limit = 3 * max(float(beat.info.get("interval", 5.0)), float(beat.info.get("every", 5.0)))
        alive = age <= limit and not beat.info.get("stopped", False)
        out.append(
            DutyStatus(
                daemon_id=str(beat.info.get("daemon", "")),
                duty=str(beat.info.get("duty", "")),
                heartbeat=beat,
                alive=alive,
                age_seconds=age,
            )
        )
    return sorted(out, key=lambda s: (s.daemon_id, s.duty))


def daemon_statuses(
    storage: InstanceStorage, *, now: float | None = None, max_age: float | None = None
) -> list[DaemonStatus]:
    """Every daemon that has sent a heartbeat, newest first, with an alive verdict.

    A daemon is alive if its last heartbeat is younger than ``max_age`` (default: three of
    its own heartbeat intervals, as it recorded them) and it did not record that it stopped.
    """
    current = storage.clock() if now is None else now
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

    Duties (:class:`~runcore.daemon.base.Duty`): **dequeue** (when the coordinator is a
    :class:`~runcore.coordinators.base.QueuingCoordinator`), **monitor** (``run_monitoring``,
    on by default) and **retries** (``run_retries``, off by default); their intervals default
    to the config's ``poll_interval_seconds`` (dequeue: ``dequeue_interval``). Add your own
    with :meth:`add_duty` before :meth:`start`.

    Threads: ``start()`` starts one thread per duty (``runcore-daemon-<name>``), so a slow
    duty delays only itself, and one for heartbeats (``runcore-daemon-heartbeat``), all
    daemonic; ``stop()`` (or leaving the ``with`` block) signals them and joins them. Each
    duty also heartbeats under its own name (``<daemon id>/<duty>``, at most once per
    heartbeat interval). The instance stays open: its owner closes it.
    """

    def __init__(
        self,
        instance: Instance,
        *,
        dequeue_interval: float = 0.5,
        heartbeat_interval: float = 5.0,
        monitor_interval: float | None = None,
        retry_interval: float | None = None,
        clock: Callable[[], float] | None = None,
        daemon_id: str | None = None,
    ) -> None:

        cfg = instance.config or InstanceConfig()
        poll = cfg.run_monitoring.poll_interval_seconds
        monitor_interval = poll if monitor_interval is None else monitor_interval
        retry_interval = poll if retry_interval is None else retry_interval
        self.dequeue_interval = _validate.interval("Daemon(dequeue_interval=...)", dequeue_interval)
        self.heartbeat_interval = _validate.interval(
            "Daemon(heartbeat_interval=...)", heartbeat_interval
        )
        self.monitor_interval = _validate.interval("Daemon(monitor_interval=...)", monitor_interval)
        self.retry_interval = _validate.interval("Daemon(retry_interval=...)", retry_interval)
        self.instance = instance
        self.monitoring = cfg.run_monitoring
        self.retrying = cfg.run_retries
        # The storage's clock by default: on a shared server every host judges ages alike.
        self.clock = clock if clock is not None else instance.storage.clock
        if daemon_id is None:
            import uuid

            daemon_id = f"{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.daemon_id = daemon_id
        self._stop = threading.Event()
        # Set by the storage's notifications (a run queued or ended) and by stop(): the
        # dequeue duty goes again at once instead of sleeping out its interval.
        self._wake = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._threads: list[threading.Thread] = []
        self._duties: list[Duty] | None = None
        self._extra: list[Duty] = []
        self._duty_beats: dict[str, float] = {}  # duty name -> when its heartbeat was written
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
        return isinstance(self.instance.run_coordinator, QueuingCoordinator)

    def add_duty(self, duty: Duty) -> None:
        """Run ``duty`` too (before :meth:`start`); its name must be new to this daemon."""
        if not isinstance(duty, Duty):
            raise ConfigError(f"Daemon.add_duty: expected a Duty, got {duty!r}")
        _validate.interval(f"duty {duty.name!r}: interval", duty.interval)
        if duty.name in self.duties:
            raise ConfigError(f"Daemon.add_duty: this daemon already has a duty {duty.name!r}")
        if self.is_running:
            raise ConfigError("Daemon.add_duty: add duties before start()")
        self._extra.append(duty)
        if self._duties is not None:
            self._duties.append(duty)

    def get_duties(self) -> list[Duty]:
        """The duties this daemon performs, built on first use (the instance is started)."""
        if self._duties is None:
            self.instance.ensure_started()
            self._duties = [*self._builtin_duties(), *self._extra]
        return list(self._duties)

    def _builtin_duties(self) -> list[Duty]:
        from runcore.daemon.dequeue import DequeueDuty
        from runcore.daemon.monitoring import RunMonitor
        from runcore.daemon.retries import RunRetrier

        duties: list[Duty] = []
        coordinator = self.instance.run_coordinator
        if isinstance(coordinator, QueuingCoordinator):
            duties.append(DequeueDuty(coordinator, self.dequeue_interval))
        if self.monitoring.enabled:
            duties.append(
                RunMonitor(
                    self.instance.storage,
                    self.instance.launcher,
                    self.monitoring,
                    self.clock,
                    launch_grace=2 * self.monitor_interval,
                    requeue=self.dequeues,
                    interval=self.monitor_interval,
                )
            )
        if self.retrying.enabled:
            duties.append(
                RunRetrier(self.instance, self.retrying, self.clock, interval=self.retry_interval)
            )
        return duties

    def _duty(self, name: str) -> Duty | None:
        return next((d for d in self.get_duties() if d.name == name), None)

    def dequeue_once(self) -> DequeueResult | None:
        """One dequeue pass (None when the coordinator does not queue)."""
        duty = self._duty("dequeue")
        return None if duty is None else duty.run_once(self.clock())  # type: ignore[return-value]

    def monitor_once(self) -> MonitorPass | None:
        """One monitoring pass (None when ``run_monitoring.enabled`` is false)."""
        duty = self._duty("monitor")
        if duty is None:
            return None
        result = duty.run_once(self.clock())
        self._log_pass(duty, result)
        return result  # type: ignore[return-value]

    def retry_once(self) -> RetryPass | None:
        """One run-retry pass (None when ``run_retries.enabled`` is false)."""
        duty = self._duty("retries")
        if duty is None:
            return None
        result = duty.run_once(self.clock())
        self._log_pass(duty, result)
        return result  # type: ignore[return-value]

    @staticmethod
    def _log_pass(duty: Duty, result: object) -> None:
        """One structured log line per monitor action and per retry (the dequeue pass logs
        each admission and launch itself)."""
        from runcore.daemon.monitoring import MonitorPass
        from runcore.daemon.retries import RetryPass

        if isinstance(result, MonitorPass):
            _log_monitor(result)
        elif isinstance(result, RetryPass):
            for run_id in result.submitted:
                log_event(log, "run_retry_submitted", run_id=run_id)
            for failed, why in result.skipped:
                log_event(log, "run_retry_skipped", run_id=failed, reason=why)

    def finishes_once(self) -> list[str]:
        """Log each run that ended since the last call (one ``run_finished`` line each);
        returns their ids. Does nothing (and reads nothing) unless INFO logging is on."""
        if not log.isEnabledFor(logging.INFO):
            return []

        self.instance.ensure_started()
        now = self.clock()
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
        """The names of the duties this daemon performs."""
        enabled = [
            ("dequeue", self.dequeues),
            ("monitor", self.monitoring.enabled),
            ("retries", self.retrying.enabled),
        ]
        return [name for name, on in enabled if on] + [d.name for d in self._extra]

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

    def _duty_heartbeat(
        self, duty: Duty, seconds: float, error: str | None, *, force: bool = False
    ) -> None:
        """The duty's own heartbeat, at most once per heartbeat interval (``force``: now)."""
        now = self.clock()
        if not force and now - self._duty_beats.get(duty.name, -1e18) < self.heartbeat_interval:
            return
        self._duty_beats[duty.name] = now
        self.instance.storage.add_daemon_heartbeat(
            DaemonHeartbeat(
                daemon_id=f"{self.daemon_id}/{duty.name}",
                daemon_type=DUTY_TYPE,
                timestamp=now,
                info={
                    "daemon": self.daemon_id,
                    "duty": duty.name,
                    "interval": duty.interval,
                    "every": self.heartbeat_interval,
                    "last_pass_seconds": round(seconds, 6),
                    "last_error": error,
                },
            )
        )

    def run_once(self) -> DaemonPass:
        """Exactly one pass of each duty, synchronously, then a heartbeat.

        Raises :class:`~runcore.errors.StorageError` first if the storage is no longer the one
        opened (see :meth:`~runcore.storage.base.InstanceStorage.check_identity`).
        """
        self.instance.ensure_started()
        self.instance.storage.check_identity()
        results: dict[str, Any] = {}
        for duty in self.get_duties():
            results[duty.name] = duty.run_once(self.clock())
        self.heartbeat()
        return DaemonPass(
            dequeue=results.get("dequeue"),
            monitor=results.get("monitor"),
            retries=results.get("retries"),
        )

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
                target=self._heartbeat_loop, name="runcore-daemon-heartbeat", daemon=True
            )
        ]
        for duty in self.get_duties():
            self._threads.append(
                threading.Thread(
                    target=self._loop,
                    args=(duty,),
                    name=f"runcore-daemon-{duty.name}",
                    daemon=True,
                )
            )
        if log.isEnabledFor(logging.INFO):
            self.finishes_once()  # from now on
            self._threads.append(
                threading.Thread(
                    target=self._loop,
                    args=(_FinishLog(self),),
                    name="runcore-daemon-finishes",
                    daemon=True,
                )
            )
        storage = self.instance.storage
        if isinstance(storage, StorageNotifier) and self._unsubscribe is None:
            try:
                self._unsubscribe = storage.subscribe(lambda kind: self._wake.set())
            except Exception:  # polling is the fallback
                log.warning("runcore daemon: no notifications from the storage; polling")
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the threads and wait up to ``timeout`` seconds for them to finish.

        Re-raises the :class:`~runcore.errors.StorageError` that stopped the duties, if the
        storage stopped being the one opened (see :attr:`fatal`).
        """
        timeout = _validate.delay("Daemon.stop(timeout=...)", timeout)
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
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

    def _record(self, duty: str, exc: BaseException) -> str:
        self.errors.append(exc)
        del self.errors[:-20]
        self._last_error = f"{duty}: {type(exc).__name__}: {exc}"
        log.exception("runcore daemon duty %s failed; it goes on", duty)
        return self._last_error

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set() and self._storage_ok():
            try:
                self.heartbeat()
            except InstanceClosedError:
                return
            except Exception as exc:
                self._record("heartbeat", exc)
            self._stop.wait(self.heartbeat_interval)

    def _loop(self, duty: Duty) -> None:
        while not self._stop.is_set() and self._storage_ok():
            busy = False
            error: str | None = None
            started = time.monotonic()
            try:
                result = duty.run_once(self.clock())
                self._log_pass(duty, result)
                busy = duty.busy(result)
            except InstanceClosedError:
                return
            except Exception as exc:
                error = self._record(duty.name, exc)
            if not isinstance(duty, _FinishLog):
                with contextlib.suppress(Exception):  # a heartbeat never stops a duty
                    self._duty_heartbeat(duty, time.monotonic() - started, error)
            # A pass that left work (a dequeue that started runs): go again at once.
            if busy:
                continue
            # Every ``interval`` seconds, pass time included: a pass slowed by a loaded
            # machine or a distant database does not stretch the duty's period (run
            # monitoring's detection time is bounded by it).
            pause = max(0.0, duty.interval - (time.monotonic() - started))
            if duty.name == "dequeue" and self._unsubscribe is not None:
                self._wake.wait(pause)  # a queued or ended run wakes it early
                self._wake.clear()
            else:
                self._stop.wait(pause)


class _FinishLog(Duty):
    """Not a duty of the daemon's own: the log line of each run that ended (only with INFO
    logging on), run on a thread like the duties."""

    name = "finishes"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.interval = daemon.dequeue_interval

    def run_once(self, now: float) -> list[str]:
        return self.daemon.finishes_once()
