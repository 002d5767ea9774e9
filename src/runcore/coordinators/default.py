"""Launch every submitted run at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.coordinators.base import RunCoordinator, launch
from runcore.errors import RunLaunchError
from runcore.runs import (
    IN_PROGRESS_STATUSES,
    ISOLATION_TAG,
    RunsFilter,
    RunStatus,
)
from runcore.storage.base import move_run

if TYPE_CHECKING:
    from runcore.runs import Run


class DefaultRunCoordinator(RunCoordinator):
    """Moves each submitted run to STARTING and hands it to the launcher immediately."""

    def __repr__(self) -> str:
        return "DefaultRunCoordinator()"

    def submit_run(self, run: Run) -> Run:
        storage = self.context.storage
        self._check_non_isolated_limit(run)
        starting = storage.transition(run.run_id, [RunStatus.NOT_STARTED], RunStatus.STARTING)
        if starting is None:
            return storage.get_run(run.run_id) or run
        try:
            launch(storage, self.context.launcher, starting)
        except Exception as exc:
            if isinstance(exc, RunLaunchError):
                raise
            raise RunLaunchError(
                f"launching run {run.run_id} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return storage.get_run(run.run_id) or starting

    def _check_non_isolated_limit(self, run: Run) -> None:
        """Refuse a non-isolated run beyond ``non_isolated_runs.max_concurrent_runs``.

        Without a queue there is nowhere to wait, so the run is CANCELED with the reason and
        :class:`RunLaunchError` says which runs hold the limit. (Two submits racing from
        different processes may both pass; the queued coordinator has no such gap.)
        """
        if run.tags.get(ISOLATION_TAG) != "non_isolated":
            return
        limit = self.context.non_isolated_runs.max_concurrent_runs
        if limit < 0:
            return
        storage = self.context.storage
        holders = [
            r.run.run_id
            for r in storage.get_run_records(
                RunsFilter(
                    statuses=list(IN_PROGRESS_STATUSES), tags={ISOLATION_TAG: "non_isolated"}
                )
            )
        ]
        if len(holders) < limit:
            return
        message = (
            f"non_isolated_runs.max_concurrent_runs is {limit} and {len(holders)} non-isolated "
            f"runs are in progress ({', '.join(holders) or 'none'}); wait for one to end, raise "
            "the limit, or use runcore.coordinators:QueuedRunCoordinator to queue instead"
        )
        move_run(
            storage, run.run_id, [RunStatus.NOT_STARTED], RunStatus.CANCELED, f"refused: {message}"
        )
        raise RunLaunchError(f"run {run.run_id} refused: {message}")
