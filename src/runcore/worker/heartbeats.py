"""Run workers' heartbeats: one thread per process beats for every run executing in it.

A run, once STARTED, is registered with its storage, launch attempt and interval; the
beater writes ``storage.worker_heartbeat(run_id, attempt_id)`` every interval until the run
is unregistered. The first beat is the move to STARTED itself where the storage stamps it
(``stamps_start_as_heartbeat``: runcore's storages do, in the same write), else it is written
at once. Run monitoring fails a run whose worker has been
silent past ``run_monitoring.worker_heartbeat_timeout_seconds``, on whatever host it runs.

One thread serves every run of the process (started on first use, daemonic), so a run
costs a dictionary entry, not a thread, and the run's own path never waits for a write.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runcore.storage.base import InstanceStorage

log = logging.getLogger("runcore.heartbeats")

#: Seconds between a worker's heartbeats unless the instance config says otherwise.
DEFAULT_INTERVAL = 10.0


class _Beat:
    __slots__ = ("attempt_id", "due", "interval", "run_id", "storage")

    def __init__(self, storage: InstanceStorage, run_id: str, attempt_id: str, interval: float):
        self.storage = storage
        self.run_id = run_id
        self.attempt_id = attempt_id
        self.interval = interval
        # A storage whose move to STARTED stamped the first heartbeat needs the next one an
        # interval later (not now, when the run's start is writing); any other at once.
        stamped = storage.stamps_start_as_heartbeat
        self.due = time.monotonic() + interval if stamped else 0.0


class _Beater:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._beats: dict[tuple[int, str], _Beat] = {}
        self._thread: threading.Thread | None = None

    def register(
        self, storage: InstanceStorage, run_id: str, attempt_id: str, interval: float
    ) -> None:
        with self._lock:
            self._beats[(id(storage), run_id)] = _Beat(storage, run_id, attempt_id, interval)
            self._start()
            self._lock.notify()

    def _start(self) -> None:
        """Start the beater thread if it is not running (the caller holds the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="runcore-worker-heartbeat", daemon=True
            )
            self._thread.start()

    def prestart(self) -> None:
        with self._lock:
            self._start()

    def unregister(self, storage: InstanceStorage, run_id: str) -> None:
        with self._lock:
            self._beats.pop((id(storage), run_id), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [b for b in self._beats.values() if b.due <= now]
                for beat in due:
                    beat.due = now + beat.interval
                if not due:
                    soonest = min((b.due for b in self._beats.values()), default=now + 60.0)
                    self._lock.wait(max(0.0, soonest - now))
                    continue
            for beat in due:
                try:
                    beat.storage.worker_heartbeat(beat.run_id, beat.attempt_id)
                except Exception as exc:  # a missed beat is retried at the next interval
                    log.warning("run %s: heartbeat not written: %s", beat.run_id, exc)


_BEATER = _Beater()


def register(
    storage: InstanceStorage, run_id: str, attempt_id: str, interval: float | None = None
) -> None:
    """Heartbeat for run ``run_id`` (attempt ``attempt_id``) from now on, every ``interval``."""
    _BEATER.register(storage, run_id, attempt_id, interval or DEFAULT_INTERVAL)


def prestart() -> None:
    """Start the beater thread now (idle until a run registers): a warm worker does, so that
    starting a thread is not on its run's path."""
    _BEATER.prestart()


def unregister(storage: InstanceStorage, run_id: str) -> None:
    """Stop heartbeating for ``run_id``."""
    _BEATER.unregister(storage, run_id)
