"""Concurrent execution on a pool of threads in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore.errors import DefinitionError
from runcore.executors.base import CANCELED_REASON, Executor

if TYPE_CHECKING:
    import concurrent.futures

    from runcore.worker.execution import RunExecution
    from runcore.worker.plan import Step


class ThreadPoolExecutor(Executor):
    """Runs up to ``max_concurrent`` ready steps at once on threads.

    Threads: a ``concurrent.futures`` pool created for each run and joined before
    :meth:`execute` returns (also when it raises: the run's cancel event is then set, so steps
    that check ``context.is_canceled`` stop early). Suits steps that wait on I/O; CPU-bound
    Python steps are better served by :class:`~runcore.executors.MultiprocessExecutor`.
    """

    def __init__(self, max_concurrent: int = 4) -> None:
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise DefinitionError(
                "ThreadPoolExecutor(max_concurrent=...) must be an int >= 1, "
                f"got {max_concurrent!r}"
            )
        self.max_concurrent = max_concurrent

    def __repr__(self) -> str:
        return f"ThreadPoolExecutor(max_concurrent={self.max_concurrent})"

    def execute(self, execution: RunExecution) -> None:
        import concurrent.futures

        ready: list[Step] = execution.plan.roots()
        running: dict[concurrent.futures.Future[bool | None], str] = {}
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_concurrent,
            thread_name_prefix=f"runcore-step-{execution.run.run_id[:8]}",
        ) as pool:
            try:
                while ready or running:
                    while (
                        ready
                        and len(running) < self.max_concurrent
                        and not execution.cancel.is_set()
                    ):
                        step = ready.pop(0)
                        running[pool.submit(execution.run_step_here, step)] = step.key
                    if not running:
                        break
                    done, _ = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in done:
                        key = running.pop(future)
                        outcome = future.result()
                        if outcome is not None:  # None: canceled while waiting for a slot
                            ready.extend(execution.finish_step(key, outcome))
            except BaseException:
                # Ctrl-C here, or an engine error: the pool still waits for the running steps
                # on the way out, so tell them (``context.is_canceled``) to stop early.
                execution.cancel.set()
                raise
        if execution.cancel.is_set():
            execution.skip_remaining(CANCELED_REASON)
