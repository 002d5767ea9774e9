"""``RecordingLauncher``: a launcher that runs nothing and remembers what it was asked."""

from __future__ import annotations

import threading

from runcore.launchers.base import RunLauncher, WorkerHealth
from runcore.runs import LEGAL_TRANSITIONS, Run, RunStatus
from runcore.storage.base import move_run


class RecordingLauncher(RunLauncher):
    """Records the runs it is asked to launch, in order, and executes none of them.

    Use it to check a coordinator configuration in a unit test: submit runs, run a daemon
    pass, and look at ``launched``. Launched runs stay STARTING (in progress, so they count
    against limits) until the test ends them with :meth:`finish`.
    """

    def __init__(self) -> None:
        self.launched: list[Run] = []
        self.terminated: list[str] = []
        self._lock = threading.Lock()

    @property
    def launched_ids(self) -> list[str]:
        """The ids of the launched runs, in launch order."""
        with self._lock:
            return [run.run_id for run in self.launched]

    def launch_run(self, run: Run) -> None:
        with self._lock:
            self.launched.append(run)

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        with self._lock:
            known = any(run.run_id == run_id for run in self.launched)
            if known:
                self.terminated.append(run_id)
        if known:
            move_run(
                self.context.storage,
                run_id,
                [RunStatus.CANCELING],
                RunStatus.CANCELED,
                "terminated by RecordingLauncher",
            )
        return known

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        with self._lock:
            known = any(r.run_id == run.run_id for r in self.launched)
        return WorkerHealth.running() if known else WorkerHealth.unknown("never launched here")

    def finish(self, run_id: str, status: RunStatus = RunStatus.SUCCESS) -> Run:
        """End a launched run as if its worker had executed it (STARTED, then ``status``)."""
        storage = self.context.storage
        storage.transition(run_id, [RunStatus.STARTING], RunStatus.STARTED)
        sources = [
            s for s in (RunStatus.STARTED, RunStatus.CANCELING) if status in LEGAL_TRANSITIONS[s]
        ]
        ended = storage.transition(run_id, sources, status)
        if ended is None:
            current = storage.get_run(run_id)
            raise ValueError(
                f"run {run_id} cannot be finished as {status.value}: it is "
                f"{current.status.value if current else 'unknown'}"
            )
        return ended
