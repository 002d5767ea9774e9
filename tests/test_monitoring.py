"""Run monitoring by the daemon: stuck runs, dead workers, max runtime, forced cancels, slots.

Time is stepped with the daemon's injectable clock instead of slept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.testing import RecordingLauncher, VirtualClock


@rc.op
def noop() -> int:
    return 1


simple = rc.job("simple", [noop])

entered = threading.Event()


@rc.op
def until_canceled(context: rc.OpContext) -> str:
    entered.set()
    context.wait_for_cancel(30)
    return "stopped"


endless = rc.job("endless", [until_canceled])


def config(tmp_path: Path, launcher: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_launcher": {"class": launcher},
        "run_monitoring": {
            "start_timeout_seconds": 60,
            "cancel_timeout_seconds": 30,
            "poll_interval_seconds": 0.05,
        },
        **extra,
    }


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[tuple[rc.Instance, RecordingLauncher, VirtualClock]]:
    with rc.Instance.from_config(config(tmp_path, "runcore.testing:RecordingLauncher")) as inst:
        launcher = inst.run_launcher
        assert isinstance(launcher, RecordingLauncher)
        yield inst, launcher, VirtualClock()


def test_a_run_stuck_in_starting_fails_after_the_start_timeout(
    recording: tuple[rc.Instance, RecordingLauncher, VirtualClock],
) -> None:
    inst, _, clock = recording
    run = inst.submit_run(simple)
    assert run.status is rc.RunStatus.STARTING  # the recording launcher runs nothing
    daemon = rc.Daemon(inst, clock=clock)
    assert daemon.monitor_once() == daemon.monitor_once()  # nothing to do yet
    assert inst.get_run(run.run_id).status is rc.RunStatus.STARTING
    clock.offset = 61
    result = daemon.monitor_once()
    assert result is not None and result.start_timeouts == (run.run_id,)
    failed = inst.get_run(run.run_id)
    assert failed.status is rc.RunStatus.FAILURE
    assert failed.failure_kind is rc.FailureKind.START_TIMEOUT
    assert "start_timeout_seconds (60 s)" in (failed.failure_reason or "")


def test_a_run_stuck_in_canceling_is_canceled_by_force(
    recording: tuple[rc.Instance, RecordingLauncher, VirtualClock],
) -> None:
    inst, _, clock = recording
    run = inst.submit_run(simple)
    # A worker that never answers the cancel: the run stays CANCELING.
    inst.storage.transition(run.run_id, [rc.RunStatus.STARTING], rc.RunStatus.CANCELING)
    daemon = rc.Daemon(inst, clock=clock)
    daemon.monitor_once()
    assert inst.get_run(run.run_id).status is rc.RunStatus.CANCELING
    clock.offset = 31
    result = daemon.monitor_once()
    assert result is not None and result.forced_cancels == (run.run_id,)
    assert inst.get_run(run.run_id).status is rc.RunStatus.CANCELED
    (event,) = inst.get_events(run.run_id, event_types=[rc.EventType.RUN_CANCELED])
    assert "cancel_timeout_seconds (30 s)" in event.message


def test_slots_of_ended_runs_are_reclaimed(
    recording: tuple[rc.Instance, RecordingLauncher, VirtualClock],
) -> None:
    inst, launcher, clock = recording
    run = inst.submit_run(simple)
    launcher.finish(run.run_id)
    # A slot written for a run that had already ended (e.g. by a crashed writer).
    assert inst.storage.claim_pool_slot("db", run.run_id, "noop", limit=1)
    assert inst.storage.claim_pool_slot("api", "run-that-was-deleted", None, limit=1)
    result = rc.Daemon(inst, clock=clock).monitor_once()
    assert result is not None and result.slots_reclaimed == 2
    assert inst.storage.get_pool_leases() == []


def test_max_runtime_terminates_and_fails_the_run(tmp_path: Path) -> None:
    entered.clear()
    cfg = config(tmp_path, "runcore.launchers:ThreadPoolRunLauncher")
    with rc.Instance.from_config(cfg) as inst:
        run = inst.submit_run(endless, tags={"runcore/max_runtime": "5"})
        assert entered.wait(10)
        clock = VirtualClock()
        daemon = rc.Daemon(inst, clock=clock)
        daemon.monitor_once()
        assert inst.get_run(run.run_id).status is rc.RunStatus.STARTED
        clock.offset = 6
        result = daemon.monitor_once()
        assert result is not None and result.max_runtimes == (run.run_id,)
        done = inst.wait_for_run(run.run_id, timeout=10)
        assert done.status is rc.RunStatus.FAILURE
        assert done.failure_kind is rc.FailureKind.MAX_RUNTIME
        assert "maximum runtime of 5 s" in (done.failure_reason or "")


def test_max_runtime_from_config(tmp_path: Path) -> None:
    entered.clear()
    cfg = config(tmp_path, "runcore.launchers:ThreadPoolRunLauncher")
    cfg["run_monitoring"]["max_runtime_seconds"] = 100
    with rc.Instance.from_config(cfg) as inst:
        run = inst.submit_run(endless)
        assert entered.wait(10)
        clock = VirtualClock()
        clock.offset = 101
        rc.Daemon(inst, clock=clock).monitor_once()
        assert inst.wait_for_run(run.run_id, timeout=10).failure_kind is rc.FailureKind.MAX_RUNTIME


HOST = textwrap.dedent(
    """
    import sys, threading, runcore as rc
    from runcore.testing.contract_jobs import LOCATION
    inst = rc.Instance.from_config({
        "storage": {"sqlite": {"path": sys.argv[1]}},
        "run_launcher": {"class": "runcore.launchers:ThreadPoolRunLauncher"},
    })
    run = inst.submit_run("gated", code_location=LOCATION,
                          tags={"gate": sys.argv[2], "started": sys.argv[3]})
    print(run.run_id, flush=True)
    threading.Event().wait()
    """
)


def test_a_host_process_that_dies_fails_its_thread_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    started = tmp_path / "started"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(db), str(tmp_path / "never"), str(started)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        run_id = host.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
    finally:
        os.kill(host.pid, signal.SIGKILL)
        host.wait(timeout=10)
    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(db)}}}) as inst:
        assert inst.get_run(run_id).status is rc.RunStatus.STARTED  # nobody noticed yet
        result = rc.Daemon(inst).monitor_once()
        assert result is not None and result.dead_workers == (run_id,)
        done = inst.get_run(run_id)
        assert done.status is rc.RunStatus.FAILURE
        assert done.failure_kind is rc.FailureKind.WORKER_DIED
        assert f"{host.pid} is gone" in (done.failure_reason or "")


def test_the_daemon_thread_monitors_on_its_own(tmp_path: Path) -> None:
    cfg = config(tmp_path, "runcore.testing:RecordingLauncher")
    cfg["run_monitoring"]["start_timeout_seconds"] = 0.1
    with rc.Instance.from_config(cfg) as inst:
        run = inst.submit_run(simple)
        with rc.Daemon(inst) as daemon:
            assert "monitor" in daemon.duties
            done = inst.wait_for_run(run.run_id, timeout=10)
        assert done.failure_kind is rc.FailureKind.START_TIMEOUT


def test_monitoring_can_be_disabled(tmp_path: Path) -> None:
    cfg = config(tmp_path, "runcore.testing:RecordingLauncher")
    cfg["run_monitoring"]["enabled"] = False
    with rc.Instance.from_config(cfg) as inst:
        daemon = rc.Daemon(inst)
        assert daemon.monitor_once() is None
        assert "monitor" not in daemon.duties


def test_cancel_while_starting_never_leaves_a_run_behind(tmp_path: Path) -> None:
    from runcore.testing.contract_jobs import LOCATION

    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}}) as inst:
        runs = []
        for delay in (0.0, 0.005, 0.02, 0.05, 0.1):
            run = inst.submit_run("pid", code_location=LOCATION)
            time.sleep(delay)  # cancel at different points of the worker's start
            inst.cancel_run(run.run_id)
            runs.append(run)
        for run in runs:
            done = inst.wait_for_run(run.run_id, timeout=30)
            # Canceled, or it was fast enough to finish before the cancel reached it.
            assert done.status in (rc.RunStatus.CANCELED, rc.RunStatus.SUCCESS), done
        assert any(inst.get_run(r.run_id).status is rc.RunStatus.CANCELED for r in runs), (
            "no cancel landed"
        )
        assert inst.storage.get_pool_leases() == []


STUBBORN = textwrap.dedent(
    """
    import time
    import runcore as rc

    @rc.op
    def stubborn(context) -> None:
        open(context.tags["started"], "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ignores its cancel on purpose
            time.sleep(0.01)

    @rc.op
    def polite(context) -> None:
        open(context.tags["started"], "w").close()
        context.wait_for_cancel(60)

    defs = rc.Definitions(jobs=[rc.job("stubborn", [stubborn]), rc.job("polite", [polite])])
    """
)

THREAD_HOST = textwrap.dedent(
    """
    import sys, threading, runcore as rc
    inst = rc.Instance.from_config({
        "storage": {"sqlite": {"path": sys.argv[1]}},
        "run_launcher": {"class": "runcore.launchers:ThreadPoolRunLauncher"},
    })
    run = inst.submit_run(sys.argv[3], code_location=sys.argv[2], tags={"started": sys.argv[4]})
    print(run.run_id, flush=True)
    threading.Event().wait()
    """
)


def _thread_host(tmp_path: Path, job: str) -> tuple[subprocess.Popen[str], str, Path]:
    location = tmp_path / "stubborn.py"
    location.write_text(STUBBORN)
    started = tmp_path / f"{job}.started"
    host = subprocess.Popen(
        [
            sys.executable,
            "-c",
            THREAD_HOST,
            str(tmp_path / "runs.db"),
            f"{location}:defs",
            job,
            str(started),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert host.stdout is not None
    run_id = host.stdout.readline().strip()
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.01)
    return host, run_id, started


def test_a_cancel_from_another_process_reaches_a_thread_run(tmp_path: Path) -> None:
    host, run_id, _ = _thread_host(tmp_path, "polite")
    try:
        with rc.Instance.from_config(
            {"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}}
        ) as inst:
            assert inst.cancel_run(run_id)
            # Not marked CANCELED behind the host's back: the host stops the run, then ends it.
            done = inst.wait_for_run(run_id, timeout=30)
            assert done.status is rc.RunStatus.CANCELED
            steps = inst.get_events(run_id, event_types=[rc.EventType.STEP_SUCCESS])
            assert [e.step_key for e in steps] == ["polite"]  # the op saw its cancel and returned
    finally:
        host.kill()
        host.wait(timeout=10)


def test_a_forced_cancel_never_kills_the_process_hosting_thread_runs(tmp_path: Path) -> None:
    host, run_id, _ = _thread_host(tmp_path, "stubborn")
    try:
        cfg = {
            "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
            "run_monitoring": {"cancel_timeout_seconds": 5},
        }
        with rc.Instance.from_config(cfg) as inst:
            assert inst.cancel_run(run_id)
            assert inst.get_run(run_id).status is rc.RunStatus.CANCELING
            clock = VirtualClock()
            clock.offset = 6
            result = rc.Daemon(inst, clock=clock).monitor_once()
            assert result is not None and result.forced_cancels == (run_id,)
            assert inst.get_run(run_id).status is rc.RunStatus.CANCELED
            time.sleep(0.2)
            assert host.poll() is None, "the host application was killed"
    finally:
        host.kill()
        host.wait(timeout=10)
