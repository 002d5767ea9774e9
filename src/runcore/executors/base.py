"""The executor interface: run the steps of one run's plan.

An executor decides *how* steps run (one after another, on threads, in processes). It gets a
:class:`~runcore.worker.execution.RunExecution` and must:

* run each step of ``execution.plan`` only after all its upstream steps succeeded, by calling
  ``execution.run_step_here(step)``, which claims the step's pool slot (waiting for it) and
  then runs the step in this thread; it returns the step's success, or ``None`` if the run
  was canceled while the step waited for its slot (the step did not run: report no outcome
  for it; the cancel rule below applies). A step run in another process first gets its slot with
  ``execution.try_claim(step)`` (False: not yet, try again later) and there calls
  ``StepRunner.run_step``, whose events must reach ``execution.emit``. Never call
  ``execution.runner.run_step`` here: it skips the pool slot;
* report every outcome with ``execution.finish_step(key, success)``, which skips the
  downstream steps of a failure;
* stop starting new steps once ``execution.cancel`` is set, and call
  ``execution.skip_remaining(reason)`` for the steps it did not start;
* return only when no step it started is still running.

It does not change the run's status; ``execute_run`` does that from the outcomes.
:class:`runcore.testing.ExecutorContract` is the pytest suite that checks all of this.
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
