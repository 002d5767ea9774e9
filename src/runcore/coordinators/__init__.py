"""Coordinators: when a submitted run may start."""

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
