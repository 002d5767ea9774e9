"""``RecordingLauncher``: a launcher that runs nothing and remembers what it was asked."""

from __future__ import annotations

import threading

from runcore.launchers.base import RunLauncher
from runcore.runs import Run, RunStatus
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

    def terminate(self, run_id: str) -> bool:
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
        return ended
