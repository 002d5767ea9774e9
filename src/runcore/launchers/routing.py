"""Send each run to the isolated or the non-isolated launcher, by its ``runcore/isolation`` tag."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth
from runcore.runs import ISOLATION_TAG

if TYPE_CHECKING:
    from collections.abc import Sequence

    from runcore.runs import Run


def is_non_isolated(run: Run) -> bool:
    """Whether ``run`` asked to run non-isolated (a thread of a long-running process)."""
    return run.tags.get(ISOLATION_TAG) == "non_isolated"


class IsolationRouter(RunLauncher):
    """Routes runs tagged ``runcore/isolation: non_isolated`` to ``non_isolated``, others to
    ``isolated``. The instance builds one when the two launchers differ; coordinators see it
    as their launcher. Threads: none of its own; it starts and closes both launchers."""

    def __init__(self, isolated: RunLauncher, non_isolated: RunLauncher) -> None:
        self.isolated = isolated
        self.non_isolated = non_isolated
        self.records_workers = isolated.records_workers and non_isolated.records_workers

    def __repr__(self) -> str:
        return f"IsolationRouter(isolated={self.isolated!r}, non_isolated={self.non_isolated!r})"

    def _for(self, run: Run) -> RunLauncher:
        return self.non_isolated if is_non_isolated(run) else self.isolated

    def start(self, context: LaunchContext) -> None:
        super().start(context)
        self.isolated.start(context)
        self.non_isolated.start(context)

    def launch_run(self, run: Run) -> None:
        self._for(run).launch_run(run)

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        run = self.context.storage.get_run(run_id)
        if run is not None:
            return self._for(run).terminate(run_id, force=force)
        return self.isolated.terminate(run_id, force=force) or self.non_isolated.terminate(
            run_id, force=force
        )

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        return self._for(run).check_run_worker_health(run)

    def check_workers_health(self, runs: Sequence[Run]) -> dict[str, WorkerHealth]:
        isolated = [run for run in runs if self._for(run) is self.isolated]
        shared = [run for run in runs if self._for(run) is not self.isolated]
        out = self.isolated.check_workers_health(isolated) if isolated else {}
        if shared:
            out.update(self.non_isolated.check_workers_health(shared))
        return out

    def close(self) -> None:
        try:
            self.isolated.close()
        finally:
            self.non_isolated.close()
