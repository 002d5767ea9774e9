"""Launchers for real: the public contract over every built-in launcher, then what is
particular to worker processes (kill -9, warm workers, stale code, bad input)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.launchers.base import HealthStatus
from runcore.launchers.subprocess import SubprocessRunLauncher
from runcore.testing import LauncherContract
from runcore.testing.contract_jobs import LOCATION


def sqlite_instance(tmp_path: Path, launcher: dict[str, Any] | None = None) -> rc.Instance:
    config: dict[str, Any] = {"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}}
    if launcher is not None:
        config["run_launcher"] = launcher
    return rc.Instance.from_config(config)


class TestThreadPoolLauncher(LauncherContract):
    @pytest.fixture
    def instance(self, tmp_path: Path) -> Iterator[rc.Instance]:
        launcher = {"class": "runcore.launchers:ThreadPoolRunLauncher"}
        with sqlite_instance(tmp_path, launcher) as inst:
            yield inst


class TestSubprocessLauncherCold(LauncherContract):
    @pytest.fixture
    def instance(self, tmp_path: Path) -> Iterator[rc.Instance]:
        with sqlite_instance(tmp_path) as inst:  # the SQLite default: worker processes
            assert isinstance(inst.run_launcher, SubprocessRunLauncher)
            yield inst


class TestSubprocessLauncherWarm(LauncherContract):
    @pytest.fixture
    def instance(self, tmp_path: Path) -> Iterator[rc.Instance]:
        launcher = {
            "class": "runcore.launchers:SubprocessRunLauncher",
            "config": {"warm_workers": 2, "preload": [LOCATION]},
        }
        with sqlite_instance(tmp_path, launcher) as inst:
            yield inst


def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[rc.Instance]:
    with sqlite_instance(tmp_path) as inst:
        yield inst


def test_runs_execute_in_their_own_process(instance: rc.Instance) -> None:
    run = instance.submit_run("pid", code_location=LOCATION)
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.SUCCESS
    worker_pid = instance.output_store.get(run.run_id, "report_pid")
    assert worker_pid != os.getpid()
    worker = instance.storage.get_worker_record(run.run_id)
    assert worker is not None and worker.kind == "process"
    assert worker.handle["pid"] == worker_pid
    assert worker.attempt_id == done.attempt_id
    assert not any(key.startswith("runcore/") for key in done.tags)


def start_gated(instance: rc.Instance, tmp_path: Path, *, gate: str) -> tuple[rc.Run, Path]:
    """Submit the contract job `gated` and wait until its op runs; the run and its start file."""
    started = tmp_path / "started"
    run = instance.submit_run(
        "gated",
        code_location=LOCATION,
        tags={"gate": str(tmp_path / gate), "started": str(started)},
    )
    until(started.exists, "the op to start")
    return run, started


def test_kill_9_of_a_worker_fails_the_run_with_the_signal(
    instance: rc.Instance, tmp_path: Path
) -> None:
    run, started = start_gated(instance, tmp_path, gate="never")
    pid = int(started.read_text())
    os.kill(pid, signal.SIGKILL)
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.FAILURE
    assert f"worker process {pid} was killed by SIGKILL" in (done.failure_reason or "")
    health = instance.run_launcher.check_run_worker_health(done)
    assert health.status is HealthStatus.DEAD
    assert "SIGKILL" in health.reason


def test_health_from_another_launcher_uses_the_recorded_pid(
    instance: rc.Instance, tmp_path: Path
) -> None:
    run, _ = start_gated(instance, tmp_path, gate="gate")
    observer = SubprocessRunLauncher()  # e.g. a daemon's, in another process: it holds no Popen
    observer.start(instance.run_launcher.context)
    current = instance.get_run(run.run_id)
    assert observer.check_run_worker_health(current).status is HealthStatus.RUNNING
    (tmp_path / "gate").touch()
    instance.wait_for_run(run.run_id, timeout=30)
    until(
        lambda: observer.check_run_worker_health(current).status is HealthStatus.DEAD,
        "the worker to exit",
    )
    observer.close()


def test_worker_killed_before_it_writes_anything(instance: rc.Instance) -> None:
    run = instance.submit_run("pid", code_location=LOCATION)
    worker = instance.storage.get_worker_record(run.run_id)
    assert worker is not None
    pid = worker.handle["pid"]
    os.kill(pid, signal.SIGKILL)  # most likely still importing: nothing written yet
    done = instance.wait_for_run(run.run_id, timeout=30)
    if done.status is rc.RunStatus.SUCCESS:  # pragma: no cover - it finished first
        pytest.skip("the worker finished before the kill reached it")
    assert done.status is rc.RunStatus.FAILURE
    assert "was killed by SIGKILL" in (done.failure_reason or "")


def test_a_location_that_fails_to_import_in_the_worker(
    instance: rc.Instance, tmp_path: Path
) -> None:
    module = tmp_path / "flaky_location.py"
    module.write_text(
        "import runcore as rc\n@rc.op\ndef one() -> int:\n    return 1\n"
        "job = rc.job('one', [one])\n"
    )
    location = f"{module}:job"
    run = instance.create_run("one", code_location=location)  # loads fine here
    module.write_text("raise ImportError('the warehouse driver is not installed')\n")
    instance.run_coordinator.submit_run(run)
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.FAILURE
    assert "the warehouse driver is not installed" in (done.failure_reason or "")


def test_a_job_without_a_code_location_is_refused_with_the_fix(instance: rc.Instance) -> None:
    job = rc.job("interactive", [rc.op(name="step")(lambda: 1)])
    with pytest.raises(rc.RunLaunchError, match="has no code location"):
        instance.submit_run(job)
    (record,) = instance.get_run_records()
    assert record.run.status is rc.RunStatus.FAILURE


def test_non_isolated_runs_go_to_threads_of_this_process(instance: rc.Instance) -> None:
    run = instance.submit_run(
        "pid", code_location=LOCATION, tags={"runcore/isolation": "non_isolated"}
    )
    done = instance.wait_for_run(run.run_id, timeout=30)
    assert done.status is rc.RunStatus.SUCCESS
    assert instance.output_store.get(run.run_id, "report_pid") == os.getpid()
    worker = instance.storage.get_worker_record(run.run_id)  # the host process holds the thread
    assert worker is not None and worker.kind == "thread"
    assert worker.handle["pid"] == os.getpid()


def test_warm_workers_are_started_ahead_and_replaced(tmp_path: Path) -> None:
    launcher = {
        "class": "runcore.launchers:SubprocessRunLauncher",
        "config": {"warm_workers": 1, "preload": [LOCATION]},
    }
    with sqlite_instance(tmp_path, launcher) as inst:
        warm = inst.run_launcher
        assert isinstance(warm, SubprocessRunLauncher)
        until(lambda: warm.ready_workers == 1, "a ready warm worker")
        ready_pid = warm._idle[0].process.pid
        run = inst.submit_run("pid", code_location=LOCATION)
        assert inst.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS
        assert inst.output_store.get(run.run_id, "report_pid") == ready_pid
        until(
            lambda: len(warm._idle) == 1 and warm._idle[0].process.pid != ready_pid,
            "a replacement warm worker",
        )


def test_a_stale_warm_worker_is_retired_when_its_code_changes(tmp_path: Path) -> None:
    module = tmp_path / "versioned.py"
    module.write_text(
        "import runcore as rc\nVERSION = 1\n@rc.op\ndef version() -> int:\n"
        "    return VERSION\njob = rc.job('version', [version])\n"
    )
    location = f"{module}:job"
    launcher = {
        "class": "runcore.launchers:SubprocessRunLauncher",
        "config": {"warm_workers": 1, "preload": [location]},
    }
    with sqlite_instance(tmp_path, launcher) as inst:
        warm = inst.run_launcher
        assert isinstance(warm, SubprocessRunLauncher)
        until(lambda: len(warm._idle) == 1, "a warm worker")
        time.sleep(0.05)
        module.write_text(module.read_text().replace("VERSION = 1", "VERSION = 2"))
        run = inst.submit_run("version", code_location=location)
        assert inst.wait_for_run(run.run_id, timeout=30).status is rc.RunStatus.SUCCESS
        assert inst.output_store.get(run.run_id, "version") == 2


def test_a_zombie_worker_counts_as_dead(instance: rc.Instance) -> None:
    import subprocess

    from runcore.launchers.base import hostname
    from runcore.launchers.processes import process_handle, process_health
    from runcore.storage.base import WorkerRecord

    child = subprocess.Popen(["sleep", "30"])
    try:
        record = WorkerRecord(
            run_id="r",
            attempt_id="a",
            kind="process",
            host=hostname(),
            handle=process_handle(child.pid),
        )
        child.kill()
        time.sleep(0.2)  # not waited for: it stays a zombie of this process
        health = process_health(record)
        assert health.status is HealthStatus.DEAD
        assert "not yet reaped" in health.reason
    finally:
        child.wait(timeout=10)
    assert process_health(record).status is HealthStatus.DEAD  # and gone, once reaped
