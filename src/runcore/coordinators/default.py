"""Launch every submitted run at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.coordinators.base import RunCoordinator
from runcore.errors import RunLaunchError
from runcore.events import ErrorInfo, Event, EventType
from runcore.runs import RunStatus

if TYPE_CHECKING:
    from runcore.runs import Run


class DefaultRunCoordinator(RunCoordinator):
    """Moves each submitted run to STARTING and hands it to the launcher immediately."""

    def __repr__(self) -> str:
        return "DefaultRunCoordinator()"

    def submit_run(self, run: Run) -> Run:
        storage = self.context.storage
        starting = storage.transition(run.run_id, [RunStatus.NOT_STARTED], RunStatus.STARTING)
        if starting is None:
            return storage.get_run(run.run_id) or run
        try:
            self.context.launcher.launch_run(starting)
        except Exception as exc:
            error = ErrorInfo.from_exception(exc)
            storage.transition(
                run.run_id,
                [RunStatus.STARTING],
                RunStatus.FAILURE,
                event=Event(
                    run_id=run.run_id,
                    event_type=EventType.RUN_FAILURE,
                    message=f"the launcher could not start the run: {error}",
                    error=error,
                ),
            )
            if isinstance(exc, RunLaunchError):
                raise
            raise RunLaunchError(
                f"launching run {run.run_id} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return storage.get_run(run.run_id) or starting
