"""The launcher interface: start a run somewhere, stop it, say whether its worker lives.

Contract:

* ``launch_run(run)`` is called with a stored run in STARTING. It arranges for the run to be
  executed (the worker moves it to STARTED and on to a terminal status) and returns without
  waiting for the run to finish. If the run cannot be started at all it raises
  :class:`~runcore.errors.RunLaunchError`; the coordinator then fails the run.
* ``terminate(run_id)`` asks the run's worker to stop; the run ends CANCELED. Returns False
  when this launcher does not hold the run (already finished, unknown, or another host's).
* ``check_run_worker_health(run)`` says whether the worker of a STARTING/STARTED run is alive.
* Launchers get their collaborators in ``start(context)``, never a reference to the instance.
* ``close()`` waits for runs this launcher executes in this process, then frees its threads.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from runcore.errors import InstanceClosedError

if TYPE_CHECKING:
    from runcore.definitions import Job
    from runcore.execution import StepPools
    from runcore.outputs import OutputStore
    from runcore.runs import Run
    from runcore.storage.base import InstanceStorage


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


#: Tags a launcher records on a run so that any process on the same host can check the
#: process executing it (a worker process, or the host process of a thread).
WORKER_PID_TAG = "runcore/worker_pid"
WORKER_HOST_TAG = "runcore/worker_host"
#: ``process``: the pid is a worker process of the run alone (it may be signalled or killed);
#: ``thread``: the pid is a host process running the run on a thread (never to be killed).
WORKER_KIND_TAG = "runcore/worker_kind"


def hostname() -> str:
    """This host's name (as recorded in :data:`WORKER_HOST_TAG`)."""
    import socket

    return socket.gethostname()


def worker_tags(pid: int, kind: str) -> dict[str, str]:
    """The tags that record process ``pid`` of this host as a run's worker (``kind``:
    ``process`` or ``thread``, see :data:`WORKER_KIND_TAG`)."""
    return {WORKER_PID_TAG: str(pid), WORKER_HOST_TAG: hostname(), WORKER_KIND_TAG: kind}


def dedicated_worker_pid(run: Run) -> int | None:
    """The pid of the run's own worker process on this host, if it has one: the only process
    runcore may signal or kill on the run's behalf (never a host process running threads)."""
    import os

    pid = run.tags.get(WORKER_PID_TAG)
    if pid is None or run.tags.get(WORKER_KIND_TAG) != "process":
        return None
    if run.tags.get(WORKER_HOST_TAG) != hostname():
        return None
    try:
        value = int(pid)
    except ValueError:
        return None
    return None if value == os.getpid() else value


def recorded_process_health(run: Run, what: str = "worker process") -> WorkerHealth:
    """Health from the pid and host a launcher recorded on the run (see :func:`worker_tags`).

    DEAD if the process is gone from this host; RUNNING if it exists (a reused pid cannot be
    told apart); UNKNOWN for another host or no record.
    """
    import os

    pid = run.tags.get(WORKER_PID_TAG)
    if pid is None:
        return WorkerHealth.unknown(f"no {what} was recorded for the run")
    host = run.tags.get(WORKER_HOST_TAG)
    if host != hostname():
        return WorkerHealth.unknown(f"the run's {what} runs on host {host!r}")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return WorkerHealth.dead(f"the {what} {pid} is gone")
    except PermissionError:
        pass  # it exists, owned by another user: look closer below
    import psutil

    try:
        if psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE:
            # Dead, waiting for its parent to reap it (which may be never, e.g. in a
            # container whose PID 1 does not reap orphans).
            return WorkerHealth.dead(f"the {what} {pid} has exited (not yet reaped)")
    except psutil.NoSuchProcess:
        return WorkerHealth.dead(f"the {what} {pid} is gone")
    except psutil.Error:
        pass
    return WorkerHealth.running()


class RunLauncher(ABC):
    """Starts runs. Subclass it, implement the three abstract methods, pass the contract suite."""

    _context: LaunchContext | None = None

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
    def terminate(self, run_id: str) -> bool:
        """Ask the run's worker to stop; False if this launcher does not hold the run."""

    @abstractmethod
    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        """Whether the worker executing ``run`` is alive."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Wait for the runs this launcher executes in this process; free its resources."""
