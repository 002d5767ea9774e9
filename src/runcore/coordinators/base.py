"""The coordinator interface: decide *when* a submitted run starts.

Contract:

* ``submit_run(run)`` takes a stored run in NOT_STARTED and returns it as it is now: QUEUED
  (a daemon will start it) or STARTING/STARTED (handed to the launcher). If the launcher
  cannot start it, the run ends FAILURE with the reason and
  :class:`~runcore.errors.RunLaunchError` is raised.
* ``cancel_run(run_id)`` cancels a run wherever it is: a run not yet launched is CANCELED at
  once; a launched one moves to CANCELING and its launcher is asked to terminate it. Returns
  False for a run that had already ended.
* Every status change goes through ``storage.transition`` (compare-and-set), so a run is
  never started twice, whoever else is looking at the same storage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import attrs

from runcore import _faults
from runcore.config import ConcurrencyConfig, NonIsolatedRunsConfig
from runcore.errors import InstanceClosedError, RunNotFoundError
from runcore.launchers.base import HealthStatus, hostname
from runcore.runs import FailureKind, RunStatus
from runcore.storage.base import WorkerRecord, move_run

if TYPE_CHECKING:
    from runcore.config import ConcurrencyConfig, NonIsolatedRunsConfig
    from runcore.coordinators.queued import DequeueResult, QueueExplanation
    from runcore.launchers.base import RunLauncher
    from runcore.runs import Run
    from runcore.storage.base import InstanceStorage


def _default_concurrency() -> ConcurrencyConfig:

    return ConcurrencyConfig()


def _default_non_isolated() -> NonIsolatedRunsConfig:

    return NonIsolatedRunsConfig()


@attrs.frozen
class CoordinatorContext:
    """A coordinator's collaborators: the storage, the launcher and the limits' config."""

    storage: InstanceStorage
    launcher: RunLauncher
    concurrency: ConcurrencyConfig = attrs.field(factory=_default_concurrency)
    non_isolated_runs: NonIsolatedRunsConfig = attrs.field(factory=_default_non_isolated)


class RunCoordinator(ABC):
    """Decides when runs start. Subclass it and implement ``submit_run``."""

    _context: CoordinatorContext | None = None

    def start(self, context: CoordinatorContext) -> None:
        """Receive collaborators. Idempotent."""
        self._context = context

    @property
    def context(self) -> CoordinatorContext:
        """The context given to :meth:`start`; an error before it."""
        if self._context is None:
            raise InstanceClosedError(f"{type(self).__name__} has not been started")
        return self._context

    @abstractmethod
    def submit_run(self, run: Run) -> Run:
        """Take a stored NOT_STARTED run; return it QUEUED, STARTING or later."""

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a run (see the module docstring). Returns False if it had already ended."""
        storage = self.context.storage
        while True:
            run = storage.get_run(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if run.status.is_terminal:
                return False
            if run.status in (RunStatus.NOT_STARTED, RunStatus.QUEUED):
                done = move_run(
                    storage,
                    run_id,
                    [run.status],
                    RunStatus.CANCELED,
                    f"canceled while {run.status.value}",
                )
                if done is not None:
                    return True
                continue  # it moved meanwhile; look again
            if run.status is RunStatus.CANCELING:
                self.context.launcher.terminate(run_id)
                return True
            moved = move_run(storage, run_id, [run.status], RunStatus.CANCELING, "cancel requested")
            if moved is None:
                continue
            if not self.context.launcher.terminate(run_id):
                current = storage.get_run(run_id) or run
                health = self.context.launcher.check_run_worker_health(current)
                if health.status is HealthStatus.RUNNING:
                    # Another live process holds it (a thread of another host process): that
                    # process sees CANCELING and stops the run; monitoring's cancel timeout
                    # bounds the wait.
                    return True
                # No worker holds it (it never got a thread, or it is gone): nothing will
                # finish the cancel, so finish it here.
                move_run(
                    storage,
                    run_id,
                    [RunStatus.CANCELING],
                    RunStatus.CANCELED,
                    "canceled; no worker was executing the run",
                )
            return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources (none by default)."""


class QueuingCoordinator(RunCoordinator):
    """A coordinator that queues runs: ``submit_run`` leaves them QUEUED, and a daemon's
    dequeue duty starts them with :meth:`dequeue_pass`. The daemon and
    ``Instance.explain_queued`` look for this interface, never for a concrete class.

    An abandoned launch (a STARTING run whose launcher recorded no worker) goes back to the
    queue under a queuing coordinator, and fails otherwise.
    """

    @abstractmethod
    def dequeue_pass(self) -> DequeueResult:
        """Start the queued runs the limits allow now, in queue order; what it did."""

    @abstractmethod
    def explain(self, run_id: str) -> QueueExplanation:
        """Why ``run_id`` has not started: each limit that holds it, with who holds it."""


def launch(storage: InstanceStorage, launcher: RunLauncher, starting: Run) -> None:
    """Hand a run just moved to STARTING to ``launcher``; on an error, fail it (see
    :func:`fail_launch`) and re-raise.

    A launcher that keeps no worker records (``records_workers`` false: one written before
    they existed) gets a placeholder record here, naming it, so that the monitor does not take
    the run for a launch that never happened.
    """
    _faults.point("after_starting")
    try:
        launcher.launch_run(starting)
    except Exception as exc:
        fail_launch(storage, starting, exc)
        raise
    if launcher.records_workers:
        return
    storage.record_worker(  # one write, kept only if the attempt has no record yet
        WorkerRecord(
            run_id=starting.run_id,
            attempt_id=starting.attempt_id or "",
            kind=f"launched by {type(launcher).__name__}",
            host=hostname(),
        ),
        replace=False,
    )


def fail_launch(storage: InstanceStorage, run: Run, exc: BaseException) -> None:
    """End a STARTING run whose launcher raised: FAILURE, kind ``launch_failure`` (only for
    the attempt that failed)."""
    move_run(
        storage,
        run.run_id,
        [RunStatus.STARTING],
        RunStatus.FAILURE,
        f"the launcher could not start the run: {type(exc).__name__}: {exc}",
        error=exc,
        kind=FailureKind.LAUNCH_FAILURE,
        attempt_id=run.attempt_id,
    )
