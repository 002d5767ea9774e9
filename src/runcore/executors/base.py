"""The executor interface: run the steps of one run's plan.

An executor decides *how* steps run (one after another, on threads, in processes). It gets a
:class:`~runcore.worker.execution.RunExecution` and must:

* run each step of ``execution.plan`` only after all its upstream steps succeeded, by calling
  ``execution.runner.run_step(step)`` (here) or an equivalent in a child process whose events
  reach ``execution.emit``;
* report every outcome with ``execution.finish_step(key, success)``, which skips the
  downstream steps of a failure;
* stop starting new steps once ``execution.cancel`` is set, and call
  ``execution.skip_remaining(reason)`` for the steps it did not start;
* return only when no step it started is still running.

It does not change the run's status; ``execute_run`` does that from the outcomes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runcore.worker.execution import RunExecution

CANCELED_REASON = "skipped: the run was canceled"


class Executor(ABC):
    """Runs the steps of a plan. Implementations are reusable across runs and thread-safe."""

    @abstractmethod
    def execute(self, execution: RunExecution) -> None:
        """Run every step of ``execution.plan`` (see the module docstring for the contract)."""
