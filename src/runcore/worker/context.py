"""What an op sees through its ``context`` parameter."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from runcore.events import Event, EventType
from runcore.worker.cancel import Cancel

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as JSON data: plain values kept, containers copied, the rest as ``repr``.

    Every storage then records the same thing (the in-memory one keeps objects as given, so
    without this a logged list would change in the log when the op later mutates it).
    """
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if type(value) in _PLAIN:
            out[str(key)] = value
            continue
        try:
            out[str(key)] = json.loads(json.dumps(value, default=repr))
        except (TypeError, ValueError):  # e.g. a dict with tuple keys, a circular list
            out[str(key)] = repr(value)
    return out


class StepLogger:
    """A structured logger whose records go to the run's event log as ``LOG`` events.

    ``context.log.info("loaded", rows=3)`` stores an event with message ``"loaded"`` and data
    ``{"rows": 3}``. Field values that JSON cannot hold are stored as their ``repr``.
    """

    __slots__ = ("_emit", "_run_id", "_step_key")

    def __init__(self, run_id: str, step_key: str | None, emit: Callable[[Event], None]) -> None:
        self._run_id = run_id
        self._step_key = step_key
        self._emit = emit

    def log(self, level: str, message: str, /, **fields: Any) -> None:
        """Record ``message`` at ``level`` (a logging level name) with structured ``fields``."""
        name = level.upper()
        if name not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
        self._emit(
            Event(
                run_id=self._run_id,
                event_type=EventType.LOG,
                step_key=self._step_key,
                message=str(message),
                level=name,
                data=jsonable_fields(fields) if fields else {},
            )
        )

    def debug(self, message: str, /, **fields: Any) -> None:
        """Record a DEBUG message."""
        self.log("DEBUG", message, **fields)

    def info(self, message: str, /, **fields: Any) -> None:
        """Record an INFO message."""
        self.log("INFO", message, **fields)

    def warning(self, message: str, /, **fields: Any) -> None:
        """Record a WARNING message."""
        self.log("WARNING", message, **fields)

    def error(self, message: str, /, **fields: Any) -> None:
        """Record an ERROR message."""
        self.log("ERROR", message, **fields)

    def critical(self, message: str, /, **fields: Any) -> None:
        """Record a CRITICAL message."""
        self.log("CRITICAL", message, **fields)


class OpContext:
    """The ``context`` argument of an op: who is running, with which tags, and a logger.

    ``run_id``, ``job_name``, ``op_name`` and ``step_key`` say what runs; ``tags`` are the run's
    tags and ``op_tags`` the op's own. ``log`` writes to the run's event log. ``attempt`` counts
    from 1 and grows with each step retry. ``is_canceled`` turns true when the run is being
    canceled; a long op may check it (or :meth:`wait_for_cancel`) and stop early.
    """

    __slots__ = (
        "_cancel",
        "attempt",
        "job_name",
        "log",
        "op_name",
        "op_tags",
        "run_id",
        "step_key",
        "tags",
    )

    def __init__(
        self,
        *,
        run_id: str,
        job_name: str,
        op_name: str,
        step_key: str,
        tags: Mapping[str, str],
        op_tags: Mapping[str, str],
        log: StepLogger,
        cancel: Cancel,
        attempt: int = 1,
    ) -> None:
        self.run_id = run_id
        self.job_name = job_name
        self.op_name = op_name
        self.step_key = step_key
        self.tags = tags
        self.op_tags = op_tags
        self.log = log
        self.attempt = attempt
        self._cancel = cancel

    @property
    def is_canceled(self) -> bool:
        """Whether the run has been asked to stop."""
        return self._cancel.is_set()

    def wait_for_cancel(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancel; returns :attr:`is_canceled`."""
        return self._cancel.wait(timeout)

    def __repr__(self) -> str:
        return f"OpContext(run_id={self.run_id!r}, step_key={self.step_key!r})"
