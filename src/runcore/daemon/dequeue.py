"""The dequeue duty: start queued runs as the limits allow (a queuing coordinator's pass)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.daemon.base import Duty

if TYPE_CHECKING:
    from runcore.coordinators.base import QueuingCoordinator
    from runcore.coordinators.queued import DequeueResult


class DequeueDuty(Duty):
    """Runs the coordinator's dequeue pass; again at once while passes start runs."""

    name = "dequeue"

    def __init__(self, coordinator: QueuingCoordinator, interval: float) -> None:
        self.coordinator = coordinator
        self.interval = interval

    def run_once(self, now: float) -> DequeueResult:
        return self.coordinator.dequeue_pass()

    def busy(self, result: object) -> bool:
        launched = getattr(result, "launched", ())
        return bool(launched or getattr(result, "lost_races", 0))
