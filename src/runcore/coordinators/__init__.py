"""Coordinators: when a submitted run may start."""

from runcore.coordinators.base import CoordinatorContext, RunCoordinator
from runcore.coordinators.default import DefaultRunCoordinator

__all__ = ["CoordinatorContext", "DefaultRunCoordinator", "RunCoordinator"]
