"""The result of ``Job.execute_in_process``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runcore.errors import DefinitionError
from runcore.events import Event, EventType
from runcore.runs import Run, RunStatus

if TYPE_CHECKING:
    from runcore.outputs import OutputStore
    from runcore.storage.base import InstanceStorage


class ExecuteInProcessResult:
    """A finished in-process run: its status, events and step outputs."""

    def __init__(self, *, run: Run, storage: InstanceStorage, output_store: OutputStore) -> None:
        self.run = run
        self._storage = storage
        self._outputs = output_store
        self._events: list[Event] | None = None

    def __repr__(self) -> str:
        return f"<ExecuteInProcessResult run_id={self.run_id!r} status={self.run.status.value}>"

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.run.run_id

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

        Raises :class:`DefinitionError` if the op is not part of the run's plan, and
        :class:`~runcore.errors.OutputStoreError` if it did not produce an output (it failed
        or was skipped).
        """
        if (
            self.run.step_keys_to_execute is not None
            and op_name not in self.run.step_keys_to_execute
        ):
            raise DefinitionError(
                f"op {op_name!r} was not executed in run {self.run_id}; executed: "
                f"{', '.join(self.run.step_keys_to_execute)}"
            )
        return self._outputs.get(self.run_id, op_name)
