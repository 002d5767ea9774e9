"""The worker-process module (``runcore.launchers.processes``) on its own, with real processes.

Spawning, warm workers, records, stderr tails and how an exit ends a run are tried directly;
everything that sends a signal runs inside a child pid namespace (``unshare --pid --fork
--mount-proc``, see ``tests/test_security.py``), beside a sentinel process that must survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.launchers.base import HealthStatus, hostname
from runcore.launchers.processes import (
    PROCESS,
    WorkerProcess,
    describe_exit,
    end_run_after_exit,
    process_health,
    spawn_run_worker,
    spawn_warm_worker,
    start_time,
)
from runcore.runs import FailureKind

if not sys.platform.startswith("linux"):
    pytestmark = pytest.mark.skip("worker processes are tested on Linux")

TIMEOUT = 120


def until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def config(tmp_path: Path) -> str:
    """An instance config, as the JSON text launchers pass to workers."""
    return json.dumps({"storage": {"sqlite": {"path": str(tmp_path / "runs.db")}}})


@pytest.fixture
def exited(config: str) -> Iterator[tuple[WorkerProcess, int]]:
    """A cold worker that has exited: it was started for a run that does not exist (code 2)."""
    worker = spawn_run_worker(str(uuid.uuid4()), "", config)
    code = worker.wait()
    yield worker, code
    worker.close()


# --- spawn, record, reap ----------------------------------------------------------------------


def test_a_cold_worker_exits_with_its_code_and_its_stderr_says_why(
    exited: tuple[WorkerProcess, int],
) -> None:
    worker, code = exited
    assert code == 2
    assert worker.poll() == 2  # reaped: poll keeps answering
    assert "runcore worker: no run with id" in worker.stderr_tail()
    reason = worker.exit_reason(code, " (of code server pid 7)")
    assert reason.startswith(
        f"the run's worker process {worker.pid} (of code server pid 7) exited with code 2 "
        "(the worker was given bad input"
    )
    assert reason.endswith(worker.stderr_tail()) and "; its last output:\n" in reason
    short = worker.stderr_tail(limit=10)
    assert 0 < len(short) <= 10 and worker.stderr_tail().endswith(short)


def test_exits_in_words() -> None:
    assert describe_exit(None) == "is still running"
    assert describe_exit(0) == "exited with code 0 (the run succeeded)"
    assert describe_exit(3) == "exited with code 3 (the run was canceled)"
    assert describe_exit(70) == "exited with code 70"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"
    assert describe_exit(-200) == "was killed by signal 200"


def test_a_warm_worker_says_it_is_ready_and_records_who_it_is(config: str) -> None:
    worker = spawn_warm_worker(config, ["no_such_module_for_preload:defs"])
    try:
        assert worker.preloaded == ("no_such_module_for_preload:defs",)
        until(worker.check_ready, "the warm worker to be ready")
        assert worker.ready_fd is None  # the pipe is closed once it has spoken
        record = worker.record("r1", "a1")
        assert (record.run_id, record.attempt_id, record.kind, record.host) == (
            "r1",
            "a1",
            PROCESS,
            hostname(),
        )
        assert record.handle == {"pid": worker.pid, "create_time": start_time(worker.pid)}
        assert record.started_at == worker.started
        assert process_health(record).status is HealthStatus.RUNNING
        assert worker.poll() is None
        worker.dismiss()  # no run comes: it exits, successfully
        assert worker.wait() == 0
        assert "preloading 'no_such_module_for_preload:defs' failed" in worker.stderr_tail()
        health = process_health(record)
        assert health.status is HealthStatus.DEAD and str(worker.pid) in health.reason
    finally:
        worker.close()


def test_a_warm_worker_takes_its_run_on_stdin(config: str) -> None:
    run_id = str(uuid.uuid4())
    worker = spawn_warm_worker(config)
    try:
        until(worker.check_ready, "the warm worker to be ready")
        assert worker.assign(run_id, "a1")
        assert worker.wait() == 2  # it looked the run up: there is no such run
        assert f"no run with id {run_id!r}" in worker.stderr_tail()
    finally:
        worker.close()


def test_a_warm_worker_that_died_refuses_its_run_and_retires(tmp_path: Path) -> None:
    worker = spawn_warm_worker("{not json")  # it exits at once: bad input
    assert worker.wait() == 2
    assert not worker.check_ready()
    assert worker.assign(str(uuid.uuid4()), "a1") is False
    worker.retire()
    assert worker.stderr.closed and worker.ready_fd is None
    assert worker.terminate(5.0) is False  # nothing left to stop
    assert worker.signal(0) is False


def test_a_worker_that_cannot_start_is_a_launch_error(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(rc.RunLaunchError, match="cannot start a worker process"):
        spawn_run_worker(str(uuid.uuid4()), "", config)


# --- an exit that leaves its run in progress -------------------------------------------------


def _stored(storage: rc.InstanceStorage, status: rc.RunStatus) -> str:
    return storage.add_run(rc.Run(job_name="job", status=status)).run_id


@pytest.mark.parametrize(
    ("status", "canceled", "ends"),
    [
        (rc.RunStatus.STARTED, None, rc.RunStatus.FAILURE),
        (rc.RunStatus.STARTING, None, rc.RunStatus.FAILURE),
        (rc.RunStatus.CANCELING, None, rc.RunStatus.CANCELED),
        (rc.RunStatus.STARTED, True, rc.RunStatus.CANCELED),
        (rc.RunStatus.CANCELING, True, rc.RunStatus.CANCELED),
        (rc.RunStatus.STARTED, False, rc.RunStatus.FAILURE),
        (rc.RunStatus.CANCELING, False, rc.RunStatus.FAILURE),
    ],
)
def test_an_exit_ends_the_run_it_left_in_progress(
    exited: tuple[WorkerProcess, int],
    status: rc.RunStatus,
    canceled: bool | None,
    ends: rc.RunStatus,
) -> None:
    worker, code = exited
    with rc.InMemoryStorage() as storage:
        run_id = _stored(storage, status)
        end_run_after_exit(storage, run_id, worker, code, canceled=canceled, whose=" (here)")
        run = storage.get_run(run_id)
        assert run is not None and run.status is ends
        expected = worker.exit_reason(code, " (here)")
        if ends is rc.RunStatus.FAILURE:
            assert run.failure_reason == expected
            assert run.failure_kind is FailureKind.WORKER_DIED
            events = [r.event for r in storage.get_event_records(run_id)]
            assert events[-1].data["exit_code"] == 2
        else:
            messages = [r.event.message for r in storage.get_event_records(run_id)]
            assert messages[-1] == f"canceled: {expected}"


def test_an_exit_leaves_a_finished_run_alone(exited: tuple[WorkerProcess, int]) -> None:
    worker, code = exited
    with rc.InMemoryStorage() as storage:
        for status in (rc.RunStatus.SUCCESS, rc.RunStatus.CANCELED, rc.RunStatus.QUEUED):
            run_id = _stored(storage, status)
            end_run_after_exit(storage, run_id, worker, code)
            assert storage.get_run(run_id).status is status  # type: ignore[union-attr]
        end_run_after_exit(storage, str(uuid.uuid4()), worker, code)  # no such run: nothing


# --- signals, in a pid namespace of their own -------------------------------------------------


SIGNAL_SCENARIO = """
import json, os, signal, subprocess, sys, tempfile, time

from runcore.launchers.processes import (
    WorkerProcess, describe_exit, signal_worker, spawn_warm_worker,
)

assert os.getpid() == 1, "not in a pid namespace"
config = sys.argv[1]
sentinel = subprocess.Popen(["sleep", "300"])
seen = {}

def stubborn():
    # A real process that ignores SIGTERM (as an op that ignores its cancel would).
    process = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout.readline().strip() == b"ready"
    return WorkerProcess(process=process, stderr=tempfile.TemporaryFile(), started=time.time())

# 1. SIGTERM, then SIGKILL once the grace is over (poll and wait send it).
worker = stubborn()
began = time.monotonic()
seen["terminated"] = worker.terminate(0.5)
time.sleep(0.2)
seen["alive_within_grace"] = worker.poll() is None
code = worker.wait(poll_interval=0.05)
seen["grace_code"] = code
seen["grace_waited"] = time.monotonic() - began >= 0.5
seen["grace_words"] = describe_exit(code)
seen["terminate_after_exit"] = worker.terminate(0.5)
worker.close()

# 2. force: SIGKILL at once.
worker = stubborn()
began = time.monotonic()
seen["forced"] = worker.terminate(30.0, force=True)
seen["forced_code"] = worker.wait()
seen["forced_fast"] = time.monotonic() - began < 10
worker.close()

# 3. A warm worker: SIGTERM before it has a run ends it; signalled by its record, by identity.
warm = spawn_warm_worker(config)
deadline = time.monotonic() + 60
while not warm.check_ready() and time.monotonic() < deadline:
    time.sleep(0.01)
record = warm.record("r1", "a1")
seen["by_record"] = signal_worker(record, signal.SIGTERM)
seen["warm_code"] = warm.wait()
seen["by_record_after_reap"] = signal_worker(record, signal.SIGTERM)
seen["assign_after_death"] = warm.assign("r1", "a1")
warm.retire()

# 4. A warm worker that will not be dismissed is killed when its grace runs out.
worker = stubborn()
worker.dismiss()  # no stdin: nothing to close
began = time.monotonic()
worker.retire(grace=0.3)
seen["retired_code"] = worker.process.returncode
seen["retire_waited"] = time.monotonic() - began >= 0.3

time.sleep(0.2)
seen["sentinel_alive"] = sentinel.poll() is None
print(json.dumps(seen))
"""


def in_pid_namespace(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` (Python) as pid 1 of a new pid namespace; returns the JSON it prints last."""
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, (
        f"scenario failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_terminate_kill_after_grace_and_signals_by_identity(config: str) -> None:
    seen = in_pid_namespace(SIGNAL_SCENARIO, config)
    assert seen == {
        "terminated": True,
        "alive_within_grace": True,
        "grace_code": -9,
        "grace_waited": True,
        "grace_words": "was killed by SIGKILL",
        "terminate_after_exit": False,
        "forced": True,
        "forced_code": -9,
        "forced_fast": True,
        "by_record": True,
        "warm_code": -15,
        "by_record_after_reap": False,
        "assign_after_death": False,
        "retired_code": -9,
        "retire_waited": True,
        "sentinel_alive": True,
    }
