"""Serial execution in the calling thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.executors.base import CANCELED_REASON, Executor

if TYPE_CHECKING:
    from runcore.worker.execution import RunExecution


class InProcessExecutor(Executor):
    """Runs steps one at a time, in topological order, in the calling thread."""

    def __repr__(self) -> str:
        return "InProcessExecutor()"

    def execute(self, execution: RunExecution) -> None:
        for step in execution.plan.steps:
            if execution.cancel.is_set():
                execution.skip_remaining(CANCELED_REASON)
                return
            if step.key in execution.skipped:
                continue
            outcome = execution.run_step_here(step)
            if outcome is None:  # canceled while waiting for a pool slot
                execution.skip_remaining(CANCELED_REASON)
                return
            execution.finish_step(step.key, outcome)
