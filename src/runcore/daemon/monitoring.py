"""Run monitoring: nothing stuck, nothing leaked. A daemon duty; one pass per poll interval.

Each pass looks at every in-progress run and, by the daemon's clock:

* STARTING with no worker recorded for its current launch attempt after ``launch_grace``
  seconds (two monitoring intervals): the attempt is given up, once, by a compare-and-set on
  the attempt id. The run goes back to QUEUED when the coordinator queues (the next dequeue
  is a new attempt), else it fails (``launch_failure``). A worker of the given-up attempt
  cannot start the run any more.
* STARTING past ``start_timeout_seconds``: the launcher is told to terminate it, and it fails
  (``failure_kind`` ``start_timeout``).
* STARTING or STARTED whose worker the launcher reports DEAD, or STARTED whose worker has
  heartbeat into storage before but not for ``worker_heartbeat_timeout_seconds`` (how a
  worker on another host is judged): it fails with the reason (``worker_died``).
* STARTED past its maximum runtime (tag ``runcore/max_runtime``, else
  ``max_runtime_seconds``): terminated, and failed (``max_runtime``).
* CANCELING past ``cancel_timeout_seconds``: marked CANCELED, and the launcher is told to
  terminate it by force (SIGKILL for a worker process it can identify).

Then it frees every pool slot whose owner run has ended (a safety net: terminal transitions
already free them). Every change is a compare-and-set, so a run that ended by itself between
the look and the write is left as it is, and two daemons never both act on one run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from runcore import _validate
from runcore.daemon.base import Duty
from runcore.errors import ConfigError
from runcore.launchers.base import HealthStatus, WorkerHealth
from runcore.runs import (
    IN_PROGRESS_STATUSES,
    MAX_RUNTIME_TAG,
    FailureKind,
    Run,
    RunsFilter,
    RunStatus,
)
from runcore.storage.base import move_run

if TYPE_CHECKING:
    from collections.abc import Mapping

    from runcore.config import RunMonitoringConfig
    from runcore.launchers.base import RunLauncher
    from runcore.storage.base import InstanceStorage, WorkerRecord


log = logging.getLogger("runcore.daemon.monitoring")


@attrs.frozen
class MonitorPass:
    """What one monitoring pass did, by run id."""

    start_timeouts: tuple[str, ...] = ()
    dead_workers: tuple[str, ...] = ()
    max_runtimes: tuple[str, ...] = ()
    forced_cancels: tuple[str, ...] = ()
    slots_reclaimed: int = 0
    #: Runs whose launch attempt recorded no worker in time: back to the queue, or failed.
    abandoned_launches: tuple[str, ...] = ()


def max_runtime_of(run: Run, default: float | None) -> float | None:
    """The run's maximum runtime in seconds: its tag, else the configured default.

    The tag is checked when the run is submitted; one that is malformed anyway (NaN, infinite,
    not > 0: a row written by something else) counts as absent."""
    raw = run.tags.get(MAX_RUNTIME_TAG)
    if raw is not None:
        with contextlib.suppress(ConfigError):
            return _validate.float_text(f"tag {MAX_RUNTIME_TAG}", raw)
    return default


class RunMonitor(Duty):
    """The monitoring duty: one pass over the in-progress runs (see the module docstring).

    Threads: none; the daemon calls :meth:`run_once` from its monitoring thread.
    """

    name = "monitor"

    def __init__(
        self,
        storage: InstanceStorage,
        launcher: RunLauncher,
        config: RunMonitoringConfig,
        clock: Callable[[], float],
        *,
        launch_grace: float | None = None,
        requeue: bool = False,
        interval: float | None = None,
    ) -> None:
        self.interval = _validate.interval(
            "RunMonitor(interval=...)",
            config.poll_interval_seconds if interval is None else interval,
        )
        self.storage = storage
        self.launcher = launcher
        self.config = config
        self.clock = clock
        #: Seconds a STARTING run may go without a worker record for its attempt.
        self.launch_grace = _validate.duration(
            "RunMonitor(launch_grace=...)",
            min(2 * config.poll_interval_seconds, _validate.MAX_SECONDS)
            if launch_grace is None
            else launch_grace,
        )
        #: Whether an abandoned launch goes back to the queue (a queuing coordinator).
        self.requeue = requeue

    def run_once(self, now: float | None = None) -> MonitorPass:
        """Check every in-progress run once, at ``now`` (default: the clock); what was done."""
        now = self.clock() if now is None else now
        found: dict[str, list[str]] = {
            "start": [],
            "dead": [],
            "runtime": [],
            "cancel": [],
            "abandoned": [],
        }
        records = [
            record
            for record in self.storage.get_run_records(
                RunsFilter(statuses=list(IN_PROGRESS_STATUSES))
            )
            if record.run.corrupt is None  # reported by `runs list`; never acted on
        ]
        waiting = [
            r.run
            for r in records
            if r.run.status is RunStatus.STARTING
            and r.run.attempt_id is not None
            and now - (r.run.updated_at or r.run.created_at) > self.launch_grace
        ]
        # One read of the worker records this pass needs: those of launches that may have been
        # abandoned, and, when heartbeats are judged, those of every STARTED run.
        judged = self.config.worker_heartbeat_timeout_seconds is not None
        wanted = [run.run_id for run in waiting] + [
            r.run.run_id for r in records if judged and r.run.status is RunStatus.STARTED
        ]
        workers = self.storage.get_worker_records(wanted) if wanted else {}
        for run in waiting:
            worker = workers.get(run.run_id)
            if (worker is None or worker.attempt_id != run.attempt_id) and self._abandon(
                run, now - (run.updated_at or run.created_at)
            ):
                found["abandoned"].append(run.run_id)
        abandoned = set(found["abandoned"])
        to_check: list[Run] = []
        for record in records:
            run = record.run
            if run.run_id in abandoned:
                continue
            since = run.updated_at or run.created_at
            if run.status is RunStatus.CANCELING:
                if now - since > self.config.cancel_timeout_seconds and self._force_cancel(
                    run, now - since
                ):
                    found["cancel"].append(run.run_id)
                continue
            if run.status is RunStatus.STARTING and now - since > self.config.start_timeout_seconds:
                if self._start_timeout(run, now - since):
                    found["start"].append(run.run_id)
                continue
            to_check.append(run)
        healths = self._healths(to_check)
        for run_id, silence in self._silent_workers(to_check, workers, now).items():
            said = healths.get(run_id, WorkerHealth.unknown())
            if said.status is HealthStatus.UNKNOWN and said.reason:
                # What the launcher could not tell goes with the verdict (an ECS task MISSING).
                healths[run_id] = WorkerHealth.dead(f"{silence.reason}; {said.reason}")
            elif said.status is not HealthStatus.DEAD:
                healths[run_id] = silence
        for run in to_check:
            if self._dead_worker(run, healths.get(run.run_id)):
                found["dead"].append(run.run_id)
                continue
            limit = max_runtime_of(run, self.config.max_runtime_seconds)
            started = run.started_at
            if (
                run.status is RunStatus.STARTED
                and limit is not None
                and started is not None
                and now - started > limit
                and self._max_runtime(run, now - started, limit)
            ):
                found["runtime"].append(run.run_id)
        reclaimed = self.storage.reclaim_pool_slots()
        return MonitorPass(
            start_timeouts=tuple(found["start"]),
            dead_workers=tuple(found["dead"]),
            max_runtimes=tuple(found["runtime"]),
            forced_cancels=tuple(found["cancel"]),
            slots_reclaimed=reclaimed,
            abandoned_launches=tuple(found["abandoned"]),
        )

    # --- the actions ------------------------------------------------------------------------

    def _fail(self, run: Run, sources: list[RunStatus], reason: str, kind: FailureKind) -> bool:
        return (
            move_run(self.storage, run.run_id, sources, RunStatus.FAILURE, reason, kind=kind)
            is not None
        )

    def _terminate(self, run: Run) -> None:
        with contextlib.suppress(Exception):  # best effort: the status change is what counts
            self.launcher.terminate(run.run_id)

    def _abandon(self, run: Run, waited: float) -> bool:
        """Give up a launch attempt that recorded no worker; True if this call did it."""
        reason = (
            f"launch attempt {run.attempt_id} recorded no worker within {waited:.1f} s (the "
            "process that launched it may have died between the STARTING transition and the "
            "launch)"
        )
        if self.requeue:
            to_status, message, kind = (
                RunStatus.QUEUED,
                f"{reason}; back to the queue for a new attempt",
                None,
            )
        else:
            to_status, message, kind = RunStatus.FAILURE, reason, FailureKind.LAUNCH_FAILURE
        moved = move_run(
            self.storage,
            run.run_id,
            [RunStatus.STARTING],
            to_status,
            message,
            kind=kind,
            attempt_id=run.attempt_id,
        )
        return moved is not None

    def _start_timeout(self, run: Run, waited: float) -> bool:
        reason = (
            f"the run was STARTING for {waited:.0f} s, past run_monitoring."
            f"start_timeout_seconds ({self.config.start_timeout_seconds:g} s): its worker "
            "never started it"
        )
        # Fail first, then stop the worker: a worker that ends the run on its way out finds
        # it terminal already, so the reason recorded is this one.
        failed = self._fail(run, [RunStatus.STARTING], reason, FailureKind.START_TIMEOUT)
        if failed:
            self._terminate(run)
        return failed

    def _healths(self, runs: list[Run]) -> dict[str, WorkerHealth]:
        """The launcher's health answers for ``runs``, in one batched call."""
        if not runs:
            return {}
        try:
            return self.launcher.check_workers_health(runs)
        except Exception:  # a launcher that cannot tell is not a dead worker
            log.exception("run monitoring: the launcher's health check failed")
            return {}

    def _silent_workers(
        self, runs: list[Run], records: Mapping[str, WorkerRecord], now: float
    ) -> dict[str, WorkerHealth]:
        """STARTED runs whose worker has heartbeat before but not within the timeout: dead,
        wherever they run (the only sign of life a worker on another host gives)."""
        timeout = self.config.worker_heartbeat_timeout_seconds
        started = [run for run in runs if run.status is RunStatus.STARTED]
        if timeout is None or not started:
            return {}
        out: dict[str, WorkerHealth] = {}
        for run in started:
            record = records.get(run.run_id)
            if record is None or record.attempt_id != run.attempt_id:
                continue
            last = record.heartbeat_at
            if last is not None and now - last > timeout:
                out[run.run_id] = WorkerHealth.dead(
                    f"its {record.kind} worker on host {record.host!r} sent no heartbeat for "
                    f"{now - last:.0f} s (run_monitoring.worker_heartbeat_timeout_seconds: "
                    f"{timeout:g})"
                )
        return out

    def _dead_worker(self, run: Run, health: WorkerHealth | None) -> bool:
        if health is None or health.status is not HealthStatus.DEAD:
            return False
        reason = f"the run's worker died: {health.reason}"
        # Only for the attempt that was judged: a run that ended by itself meanwhile, or moved
        # on to a new attempt, is left as it is.
        moved = move_run(
            self.storage,
            run.run_id,
            [RunStatus.STARTING, RunStatus.STARTED],
            RunStatus.FAILURE,
            reason,
            kind=FailureKind.WORKER_DIED,
            attempt_id=run.attempt_id,
        )
        if moved is not None:
            self._terminate(run)  # a silent worker may live on, cut off: stop it if reachable
        return moved is not None

    def _max_runtime(self, run: Run, ran: float, limit: float) -> bool:
        reason = f"the run ran for {ran:.0f} s, past its maximum runtime of {limit:g} s"
        failed = self._fail(
            run, [RunStatus.STARTED, RunStatus.CANCELING], reason, FailureKind.MAX_RUNTIME
        )
        if failed:
            self._terminate(run)
        return failed

    def _force_cancel(self, run: Run, waited: float) -> bool:
        done = move_run(
            self.storage,
            run.run_id,
            [RunStatus.CANCELING],
            RunStatus.CANCELED,
            f"canceled by force: the run was CANCELING for {waited:.0f} s, past "
            f"run_monitoring.cancel_timeout_seconds ({self.config.cancel_timeout_seconds:g} s)",
        )
        if done is None:
            return False  # it ended by itself meanwhile
        with contextlib.suppress(Exception):  # best effort: the status change is what counts
            self.launcher.terminate(run.run_id, force=True)
        return True
