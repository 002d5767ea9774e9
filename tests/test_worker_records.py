"""Worker records and heartbeats: who executes a run, and how any host tells it lives.

Real SQLite files and real worker processes; time is stepped with the daemon's clock.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.storage.base import WorkerRecord

LOCATION = "runcore.testing.contract_jobs:defs"


def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def config(tmp_path: Path, **monitoring: Any) -> dict[str, Any]:
    return {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
        "run_monitoring": {"poll_interval_seconds": 0.05, **monitoring},
    }


@rc.op
def noop() -> int:
    return 1


simple = rc.job("simple", [noop])


def test_a_worker_process_heartbeats_into_storage(tmp_path: Path) -> None:
    cfg = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_monitoring": {
            "worker_heartbeat_interval_seconds": 0.1,
            "worker_heartbeat_timeout_seconds": 30,
        },
    }
    with rc.Instance.from_config(cfg) as inst:
        started = tmp_path / "started"
        run = inst.submit_run(
            "gated",
            code_location=LOCATION,
            tags={"gate": str(tmp_path / "gate"), "started": str(started)},
        )
        until(started.exists, "the op to start")
        until(
            lambda: (
                (
                    inst.storage.get_worker_record(run.run_id)
                    or WorkerRecord(run_id="", attempt_id="", kind="", host="")
                ).heartbeat_at
                is not None
            ),
            "a first heartbeat",
        )
        first = inst.storage.get_worker_record(run.run_id)
        assert first is not None and first.heartbeat_at is not None
        assert first.kind == "process" and first.attempt_id == inst.get_run(run.run_id).attempt_id
        until(
            lambda: (
                inst.storage.get_worker_record(run.run_id).heartbeat_at  # type: ignore[union-attr]
                > first.heartbeat_at
            ),  # type: ignore[operator]
            "a second heartbeat",
        )
        (tmp_path / "gate").touch()
        assert inst.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS


def _started_elsewhere(inst: rc.Instance, *, beat: bool) -> rc.Run:
    """A STARTED run whose worker is on another host (the recording launcher runs nothing)."""
    run = inst.submit_run(simple)
    storage = inst.storage
    started = storage.transition(
        run.run_id, [rc.RunStatus.STARTING], rc.RunStatus.STARTED, attempt_id=run.attempt_id
    )
    assert started is not None
    storage.record_worker(
        WorkerRecord(
            run_id=run.run_id,
            attempt_id=started.attempt_id or "",
            kind="process",
            host="another-host",
            handle={"pid": 4242, "create_time": 1.0},
        )
    )
    if beat:
        assert storage.worker_heartbeat(run.run_id, started.attempt_id or "")
    return started


def test_a_worker_on_another_host_that_stops_heartbeating_is_dead(tmp_path: Path) -> None:
    cfg = config(tmp_path, worker_heartbeat_interval_seconds=1, worker_heartbeat_timeout_seconds=5)
    with rc.Instance.from_config(cfg) as inst:
        silent = _started_elsewhere(inst, beat=True)
        never = _started_elsewhere(inst, beat=False)  # no beat yet: judged by other rules
        clock = Clock()
        daemon = rc.Daemon(inst, clock=clock)
        assert daemon.monitor_once().dead_workers == ()  # type: ignore[union-attr]
        clock.offset = 6
        result = daemon.monitor_once()
        assert result is not None and result.dead_workers == (silent.run_id,)
        done = inst.get_run(silent.run_id)
        assert done.status is rc.RunStatus.FAILURE
        assert done.failure_kind is rc.FailureKind.WORKER_DIED
        assert "sent no heartbeat" in (done.failure_reason or "")
        assert "another-host" in (done.failure_reason or "")
        assert inst.get_run(never.run_id).status is rc.RunStatus.STARTED


def test_heartbeat_timeout_can_be_off_and_must_exceed_the_interval(tmp_path: Path) -> None:
    cfg = config(tmp_path, worker_heartbeat_timeout_seconds=None)
    with rc.Instance.from_config(cfg) as inst:
        silent = _started_elsewhere(inst, beat=True)
        clock = Clock()
        clock.offset = 1e6
        rc.Daemon(inst, clock=clock).monitor_once()
        assert inst.get_run(silent.run_id).status is rc.RunStatus.STARTED
    with pytest.raises(rc.ConfigError, match="worker_heartbeat_timeout_seconds"):
        rc.Instance.from_config(
            config(
                tmp_path, worker_heartbeat_interval_seconds=10, worker_heartbeat_timeout_seconds=5
            )
        )


def test_a_custom_launcher_without_records_gets_a_placeholder(tmp_path: Path) -> None:
    with rc.Instance.from_config(config(tmp_path)) as inst:
        run = inst.submit_run(simple)
        record = inst.storage.get_worker_record(run.run_id)
        assert record is not None
        assert record.kind == "launched by RecordingLauncher"
        assert record.attempt_id == run.attempt_id
        # ... so monitoring does not take it for a launch that never happened.
        clock = Clock()
        clock.offset = 5
        result = rc.Daemon(inst, clock=clock).monitor_once()
        assert result is not None and result.abandoned_launches == ()


def test_an_abandoned_launch_fails_under_a_coordinator_that_does_not_queue(
    tmp_path: Path,
) -> None:
    with rc.Instance.from_config(config(tmp_path)) as inst:
        run = inst.create_run(simple)
        starting = inst.storage.transition(
            run.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.STARTING
        )
        assert starting is not None  # ... and the process that did it died here
        clock = Clock()
        clock.offset = 1
        result = rc.Daemon(inst, clock=clock).monitor_once()
        assert result is not None and result.abandoned_launches == (run.run_id,)
        done = inst.get_run(run.run_id)
        assert done.status is rc.RunStatus.FAILURE
        assert done.failure_kind is rc.FailureKind.LAUNCH_FAILURE
        assert "recorded no worker" in (done.failure_reason or "")
        # A worker of that attempt, coming up late, cannot start it.
        late = inst.storage.transition(
            run.run_id,
            [rc.RunStatus.STARTING],
            rc.RunStatus.STARTED,
            attempt_id=starting.attempt_id,
        )
        assert late is None


def test_an_abandoned_launch_goes_back_to_the_queue_once(tmp_path: Path) -> None:
    cfg = {
        **config(tmp_path),
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
    }
    with rc.Instance.from_config(cfg) as inst:
        run = inst.submit_run(simple)
        starting = inst.storage.transition(run.run_id, [rc.RunStatus.QUEUED], rc.RunStatus.STARTING)
        assert starting is not None
        clock = Clock()
        clock.offset = 1
        daemons = [rc.Daemon(inst, clock=clock) for _ in range(2)]
        results = [d.monitor_once() for d in daemons]
        assert sum(len(r.abandoned_launches) for r in results if r) == 1  # exactly once
        back = inst.get_run(run.run_id)
        assert back.status is rc.RunStatus.QUEUED and back.attempt_id is None
        dequeued = daemons[0].dequeue_once()
        assert dequeued is not None and dequeued.launched == (run.run_id,)
        again = inst.get_run(run.run_id)
        assert again.attempt_id not in (None, starting.attempt_id)
        assert (
            inst.storage.transition(
                run.run_id,
                [rc.RunStatus.STARTING],
                rc.RunStatus.STARTED,
                attempt_id=starting.attempt_id,
            )
            is None
        )


def test_daemon_duties_heartbeat_under_their_own_names(tmp_path: Path) -> None:
    from runcore.daemon import Duty, duty_statuses

    class Counting(Duty):
        name = "counting"
        interval = 0.02

        def __init__(self) -> None:
            self.passes = 0

        def run_once(self, now: float) -> int:
            self.passes += 1
            return self.passes

    cfg = {
        **config(tmp_path),
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
    }
    with rc.Instance.from_config(cfg) as inst:
        daemon = rc.Daemon(inst, dequeue_interval=0.02, heartbeat_interval=0.05)
        counting = Counting()
        daemon.add_duty(counting)
        with pytest.raises(rc.ConfigError, match="already has a duty"):
            daemon.add_duty(Counting())
        with daemon:
            until(lambda: counting.passes >= 3, "the custom duty to run")
            until(
                lambda: (
                    {s.duty for s in duty_statuses(inst.storage)}
                    >= {"dequeue", "monitor", "counting"}
                ),
                "a heartbeat of every duty",
            )
        names = {s.duty: s for s in duty_statuses(inst.storage)}
        assert names["counting"].daemon_id == daemon.daemon_id
        assert "counting" in daemon.duties


def test_a_slow_duty_does_not_starve_the_others(tmp_path: Path) -> None:
    from runcore.daemon import Duty

    class Slow(Duty):
        name = "slow"
        interval = 0.01

        def run_once(self, now: float) -> None:
            time.sleep(2)

    cfg = {
        **config(tmp_path),
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
    }
    with rc.Instance.from_config(cfg) as inst:
        daemon = rc.Daemon(inst, dequeue_interval=0.02)
        daemon.add_duty(Slow())
        with daemon:
            time.sleep(0.1)
            run = inst.submit_run(simple)
            until(
                lambda: inst.get_run(run.run_id).status is not rc.RunStatus.QUEUED,
                "the dequeue duty to start the run while the slow duty sleeps",
                timeout=1.5,
            )


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("worker processes are tested on Linux")
