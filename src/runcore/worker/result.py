"""The result of ``Job.execute_in_process``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runcore.errors import DefinitionError, OutputStoreError
from runcore.events import Event, EventType
from runcore.runs import Run, RunStatus

if TYPE_CHECKING:
    from runcore.storage.base import InstanceStorage
    from runcore.worker.outputs import OutputStore


class ExecuteInProcessResult:
    """A finished in-process run: its status, events and step outputs."""

    def __init__(
        self,
        *,
        run: Run,
        storage: InstanceStorage,
        output_store: OutputStore,
        op_names: Sequence[str] | None = None,
    ) -> None:
        self.run = run
        self._storage = storage
        self._outputs = output_store
        self._op_names = tuple(op_names) if op_names is not None else None
        self._events: list[Event] | None = None

    def __repr__(self) -> str:
        return f"<ExecuteInProcessResult run_id={self.run_id!r} status={self.run.status.value}>"

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.run.run_id

    @property
    def status(self) -> RunStatus:
        """The run's final status."""
        return self.run.status

    @property
    def failure_reason(self) -> str | None:
        """Why the run failed (it names the first failed step), or ``None``."""
        return self.run.failure_reason

    @property
    def success(self) -> bool:
        """Whether the run ended SUCCESS."""
        return self.run.status is RunStatus.SUCCESS

    @property
    def events(self) -> list[Event]:
        """Every event of the run, in order (read from storage once, then cached)."""
        if self._events is None:
            self._events = [r.event for r in self._storage.get_event_records(self.run_id)]
        return self._events

    def events_for_step(self, step_key: str) -> list[Event]:
        """The events of one step, in order."""
        return [e for e in self.events if e.step_key == step_key]

    def first_failure(self) -> Event | None:
        """The first STEP_FAILURE event (or the RUN_FAILURE event if no step failed)."""
        for event_type in (EventType.STEP_FAILURE, EventType.RUN_FAILURE):
            for event in self.events:
                if event.event_type is event_type:
                    return event
        return None

    def output_for(self, op_name: str) -> Any:
        """The value the op returned in this run.

        Raises :class:`DefinitionError` if the job has no such op or it is not part of the
        run's plan, and :class:`~runcore.errors.OutputStoreError` if it did not produce an
        output (it failed or was skipped).
        """
        if self._op_names is not None and op_name not in self._op_names:
            raise DefinitionError(
                f"job {self.run.job_name!r} has no op {op_name!r} (ops: "
                f"{', '.join(self._op_names)})"
            )
        if (
            self.run.step_keys_to_execute is not None
            and op_name not in self.run.step_keys_to_execute
        ):
            raise DefinitionError(
                f"op {op_name!r} was not executed in run {self.run_id}; executed: "
                f"{', '.join(self.run.step_keys_to_execute)}"
            )
        try:
            return self._outputs.get(self.run_id, op_name)
        except OutputStoreError as exc:
            why = {
                EventType.STEP_FAILURE: "it failed",
                EventType.STEP_SKIPPED: "it was skipped",
            }
            for event in reversed(self.events_for_step(op_name)):
                if event.event_type in why:
                    raise OutputStoreError(
                        f"op {op_name!r} has no output in run {self.run_id}: "
                        f"{why[event.event_type]} ({event.message})"
                    ) from exc
            raise
