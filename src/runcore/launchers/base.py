"""The launcher interface: start a run somewhere, stop it, say whether its worker lives.

Contract:

* ``launch_run(run)`` is called with a stored run in STARTING. It arranges for the run to be
  executed (the worker moves it to STARTED and on to a terminal status) and returns without
  waiting for the run to finish. If the run cannot be started at all it raises
  :class:`~runcore.errors.RunLaunchError`; the coordinator then fails the run.
* After starting a worker, it records who executes the run as a
  :class:`~runcore.storage.base.WorkerRecord` (``storage.record_worker``), for the run's current
  attempt (``run.attempt_id``); the worker moves the run to STARTED only for that attempt. If
  ``record_worker`` says the attempt was given up meanwhile, the launcher stops that worker.
* ``terminate(run_id, force=False)`` asks the run's worker to stop (``force``: at once, e.g.
  SIGKILL); the run ends CANCELED. Returns False when this launcher cannot reach the run's
  worker (already finished, unknown, or another host's). Only the launcher signals processes,
  and only after checking their identity against the worker record
  (:mod:`runcore.launchers.processes`).
* ``check_run_worker_health(run)`` says whether the worker of a STARTING/STARTED run is alive.
* Launchers get their collaborators in ``start(context)``, never a reference to the instance.
* ``close()`` waits for runs this launcher executes in this process, then frees its threads.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from runcore.errors import InstanceClosedError

if TYPE_CHECKING:
    from runcore.definitions import Job
    from runcore.runs import Run
    from runcore.storage.base import InstanceStorage
    from runcore.worker.execution import StepPools
    from runcore.worker.hooks import RunHooks
    from runcore.worker.outputs import OutputStore


@attrs.frozen
class LaunchContext:
    """What a launcher may use: the storage, how to find a run's job, where outputs go, the
    instance config as JSON-able data for worker processes, and the op-granularity pool
    settings to execute runs with (None: steps claim no pool slots)."""

    storage: InstanceStorage
    resolve_job: Callable[[Run], Job]
    output_store: OutputStore
    instance_config: Mapping[str, Any] = attrs.field(factory=dict)
    pools: StepPools | None = None
    #: Seconds between a run worker's heartbeats (None: runs here do not heartbeat).
    heartbeat_interval: float | None = None
    #: Seconds of heartbeat silence after which run monitoring fails a run
    #: (``run_monitoring.worker_heartbeat_timeout_seconds``; None: heartbeats are not judged).
    #: A launcher that cannot tell whether a worker on another host is dead may answer
    #: UNKNOWN and leave it to the heartbeats only when this is set.
    heartbeat_timeout: float | None = None
    #: Hooks observing the runs executed in this process (see :mod:`runcore.worker.hooks`).
    hooks: tuple[RunHooks, ...] = ()


class HealthStatus(enum.Enum):
    """Whether a run's worker is alive."""

    RUNNING = "RUNNING"
    DEAD = "DEAD"
    UNKNOWN = "UNKNOWN"


@attrs.frozen
class WorkerHealth:
    """A health check's answer, with the reason when the worker is dead or unknown."""

    status: HealthStatus
    reason: str = ""

    @classmethod
    def running(cls) -> WorkerHealth:
        """The worker is alive."""
        return cls(HealthStatus.RUNNING)

    @classmethod
    def dead(cls, reason: str) -> WorkerHealth:
        """The worker is gone; ``reason`` says how (exit code, signal, ...)."""
        return cls(HealthStatus.DEAD, reason)

    @classmethod
    def unknown(cls, reason: str = "") -> WorkerHealth:
        """This launcher cannot tell."""
        return cls(HealthStatus.UNKNOWN, reason)


def hostname() -> str:
    """This host's name (as recorded in worker records)."""
    import socket

    return socket.gethostname()


class RunLauncher(ABC):
    """Starts runs. Subclass it, implement the three abstract methods, pass the contract suite."""

    _context: LaunchContext | None = None
    #: Whether this launcher records a :class:`~runcore.storage.base.WorkerRecord` for each
    #: run it launches (the built-ins do). If not, the coordinator records a placeholder
    #: naming the launcher once ``launch_run`` returns.
    records_workers: bool = False

    def start(self, context: LaunchContext) -> None:
        """Receive collaborators and open resources (threads, connections). Idempotent."""
        self._context = context

    @property
    def context(self) -> LaunchContext:
        """The context given to :meth:`start`; an error before it."""
        if self._context is None:
            raise InstanceClosedError(
                f"{type(self).__name__} has not been started; an Instance starts its launcher, "
                "or call launcher.start(context) yourself"
            )
        return self._context

    @abstractmethod
    def launch_run(self, run: Run) -> None:
        """Start executing ``run`` (in STARTING); return without waiting for it to finish."""

    @abstractmethod
    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        """Ask the run's worker to stop (``force``: without waiting for it to clean up);
        False if this launcher cannot reach the run's worker."""

    @abstractmethod
    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        """Whether the worker executing ``run`` is alive."""

    def check_workers_health(self, runs: Sequence[Run]) -> dict[str, WorkerHealth]:
        """The health of many runs' workers at once, by run id (what run monitoring calls).

        This default asks :meth:`check_run_worker_health` run by run; a launcher that can batch
        (one storage read for all worker records, one API call for many tasks) overrides it.
        """
        return {run.run_id: self.check_run_worker_health(run) for run in runs}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Wait for the runs this launcher executes in this process; free its resources."""
