"""Events: what happened in a run, in order. Stored as JSON, never pickled."""

from __future__ import annotations

import enum
import time
from typing import Any

import attrs

from runcore.runs import RunStatus


class EventType(enum.Enum):
    """Kinds of event. Run events go with a status change; step events describe one step."""

    RUN_ENQUEUED = "RUN_ENQUEUED"
    RUN_STARTING = "RUN_STARTING"
    RUN_START = "RUN_START"
    RUN_SUCCESS = "RUN_SUCCESS"
    RUN_FAILURE = "RUN_FAILURE"
    RUN_CANCELING = "RUN_CANCELING"
    RUN_CANCELED = "RUN_CANCELED"
    RUN_REQUEUED = "RUN_REQUEUED"
    STEP_START = "STEP_START"
    STEP_OUTPUT = "STEP_OUTPUT"
    STEP_SUCCESS = "STEP_SUCCESS"
    STEP_FAILURE = "STEP_FAILURE"
    STEP_SKIPPED = "STEP_SKIPPED"
    STEP_UP_FOR_RETRY = "STEP_UP_FOR_RETRY"
    LOG = "LOG"
    ENGINE_EVENT = "ENGINE_EVENT"
    RESOURCE_METRICS = "RESOURCE_METRICS"


#: The event that records a run's move into each status.
STATUS_EVENT_TYPES: dict[RunStatus, EventType] = {
    RunStatus.QUEUED: EventType.RUN_ENQUEUED,
    RunStatus.STARTING: EventType.RUN_STARTING,
    RunStatus.STARTED: EventType.RUN_START,
    RunStatus.SUCCESS: EventType.RUN_SUCCESS,
    RunStatus.FAILURE: EventType.RUN_FAILURE,
    RunStatus.CANCELING: EventType.RUN_CANCELING,
    RunStatus.CANCELED: EventType.RUN_CANCELED,
}

STEP_EVENT_TYPES = frozenset(
    {
        EventType.STEP_START,
        EventType.STEP_OUTPUT,
        EventType.STEP_SUCCESS,
        EventType.STEP_FAILURE,
        EventType.STEP_SKIPPED,
        EventType.STEP_UP_FOR_RETRY,
    }
)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """An exception as data: its type name, message, formatted traceback and cause chain."""

    type: str
    message: str
    traceback: str = ""
    cause: ErrorInfo | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Capture ``exc`` (and its ``__cause__`` chain) without holding a reference to it."""
        import traceback

        cause = exc.__cause__
        return cls(
            type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            cause=cls.from_exception(cause) if cause is not None and cause is not exc else None,
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@attrs.frozen(kw_only=True)
class Event:
    """One thing that happened in a run.

    ``data`` holds JSON-able detail (log fields, output metadata, attempt numbers); ``error`` the
    error of a failure event. ``level`` is a logging level name for ``LOG`` events.
    """

    run_id: str
    event_type: EventType
    timestamp: float = attrs.field(factory=time.time)
    step_key: str | None = None
    message: str = ""
    level: str = "INFO"
    data: dict[str, Any] = attrs.field(factory=dict)
    error: ErrorInfo | None = None


@attrs.frozen
class EventRecord:
    """A stored event and its storage id: increasing per storage, a cursor for tailing a run."""

    storage_id: int
    event: Event
