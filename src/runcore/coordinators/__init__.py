"""Coordinators: when a submitted run may start.

Each name is imported on first use (see :mod:`runcore._lazy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore import _lazy

if TYPE_CHECKING:
    from runcore.coordinators.admission import Decision, Hold, Limits, TagLimit, admit
    from runcore.coordinators.base import CoordinatorContext, QueuingCoordinator, RunCoordinator
    from runcore.coordinators.default import DefaultRunCoordinator
    from runcore.coordinators.queued import DequeueResult, QueuedRunCoordinator, QueueExplanation

__all__ = [
    "CoordinatorContext",
    "Decision",
    "DefaultRunCoordinator",
    "DequeueResult",
    "Hold",
    "Limits",
    "QueueExplanation",
    "QueuedRunCoordinator",
    "QueuingCoordinator",
    "RunCoordinator",
    "TagLimit",
    "admit",
]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "CoordinatorContext": "runcore.coordinators.base",
        "Decision": "runcore.coordinators.admission",
        "DefaultRunCoordinator": "runcore.coordinators.default",
        "DequeueResult": "runcore.coordinators.queued",
        "Hold": "runcore.coordinators.admission",
        "Limits": "runcore.coordinators.admission",
        "QueueExplanation": "runcore.coordinators.queued",
        "QueuedRunCoordinator": "runcore.coordinators.queued",
        "QueuingCoordinator": "runcore.coordinators.base",
        "RunCoordinator": "runcore.coordinators.base",
        "TagLimit": "runcore.coordinators.admission",
        "admit": "runcore.coordinators.admission",
    },
)
