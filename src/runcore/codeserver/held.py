"""The runs a code server holds, and the bounded pool of threads that executes them."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from runcore.codeserver.client import RemoteRunState
from runcore.worker.cancel import CancelEvent

if TYPE_CHECKING:
    from runcore.definitions import Job
    from runcore.launchers.processes import WorkerProcess
    from runcore.runs import Run

log = logging.getLogger("runcore.codeserver")


@attrs.define(eq=False)
class HeldRun:
    """A run this server holds, from ``ExecuteRun`` until its worker is done with it.

    Mutable fields are guarded by the server's lock.
    """

    run: Run
    job: Job | None  # None in process mode: the child loads it
    cancel: CancelEvent = attrs.field(factory=CancelEvent)
    state: RemoteRunState = RemoteRunState.QUEUED
    dropped: bool = False  # canceled while queued: the worker that picks it up skips it
    worker: WorkerProcess | None = None  # process mode: the run's worker process
    term_sent: bool = False  # process mode: its worker was told to stop

    @property
    def run_id(self) -> str:
        return self.run.run_id


class RunWorkers:
    """A bounded pool of run worker threads taking held runs in FIFO order.

    Threads: up to ``max_workers`` daemon threads named ``runcore-codeserver-run-N``, each
    started when a run is queued and no worker is idle, so an idle server holds none. They
    exit after :meth:`stop` once the queue is empty; a worker busy with a run exits after it.
    Daemon threads, so that an op that ignores its cancel cannot keep the process alive.
    """

    def __init__(self, max_workers: int, work: Callable[[HeldRun], None]) -> None:
        self.max_workers = max_workers
        self._work = work
        self._cond = threading.Condition()
        self._queue: collections.deque[HeldRun] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._started = 0
        self._stopping = False

    def submit(self, held: HeldRun) -> None:
        """Queue ``held``; a worker takes it as soon as one is free."""
        with self._cond:
            self._queue.append(held)
            if len(self._queue) > self._idle and self._threads < self.max_workers:
                self._threads += 1
                self._started += 1
                threading.Thread(
                    target=self._loop, name=f"runcore-codeserver-run-{self._started}", daemon=True
                ).start()
            else:
                self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                if not self._queue:
                    self._threads -= 1
                    return
                held = self._queue.popleft()
            try:
                self._work(held)
            except BaseException:
                log.exception("code server: run %s: the run worker failed", held.run_id)

    def stop(self) -> None:
        """Let idle workers exit; busy ones exit after their run."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
