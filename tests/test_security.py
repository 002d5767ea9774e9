"""The trust boundary, tried as an attacker would (issue: "no user input can steer a signal").

Every test that could send a signal runs its scenario inside a child pid namespace
(``unshare --pid --fork --mount-proc``): a regression there can only reach processes of that
namespace, never the test runner or the machine. Each such scenario starts a *sentinel*
process that must survive it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore import _serde
from runcore.storage import SqliteStorage

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def in_pid_namespace(code: str, *args: str, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``code`` (Python) as pid 1 of a new pid namespace; returns the JSON it prints last.

    The scenario asserts what it can itself; the JSON carries what the test checks.
    """
    proc = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            textwrap.dedent(code),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, (
        f"scenario failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- tags: the reserved namespace --------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "runcore/worker_pid",
        "runcore/worker_kind",
        "runcore/worker_host",
        "runcore/retry_number",
        "runcore/code_server",
        "runcore/anything",
    ],
)
def test_runcore_tags_outside_the_allow_list_are_refused(tag: str) -> None:
    job = rc.job("j", [rc.op(name="o")(lambda: 1)])
    inst = rc.Instance.ephemeral()
    with pytest.raises(rc.ConfigError, match=tag):
        inst.submit_run(job, tags={tag: "-1"})
    with pytest.raises(rc.RuncoreError, match=tag):
        rc.job("j2", [rc.op(name="o2")(lambda: 1)], tags={tag: "0"})
    assert inst.get_runs() == [], "nothing was stored"


def test_the_allow_list_is_public_and_documented() -> None:
    from runcore.runs import USER_CONTROL_TAGS

    doc = (ROOT / "docs" / "security.md").read_text()
    assert set(USER_CONTROL_TAGS) >= {
        "runcore/priority",
        "runcore/isolation",
        "runcore/max_retries",
        "runcore/retry_strategy",
        "runcore/max_runtime",
        "runcore/backfill",
    }
    for tag in USER_CONTROL_TAGS:
        assert f"`{tag}`" in doc, f"{tag} is not documented in docs/security.md"


def test_the_cli_refuses_a_worker_pid_tag_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(
        "import runcore as rc\n@rc.op\ndef one() -> int:\n    return 1\n"
        "defs = rc.Definitions(jobs=[rc.job('j', [one])])\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runcore",
            "job",
            "execute",
            "pipeline.py:defs",
            "j",
            "--tag",
            "runcore/worker_pid=-1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "runcore/worker_pid" in done.stderr
    assert not (tmp_path / ".runcore" / "runs.db").exists() or "Traceback" not in done.stderr


# --- no signal from user-writable data ---------------------------------------------------------

SIGNAL_SCENARIO = r"""
import json, os, sqlite3, subprocess, sys, time
import runcore as rc
from runcore.launchers import SubprocessRunLauncher
from runcore.launchers.base import hostname
from runcore.launchers.processes import process_handle, signal_worker
from runcore.storage.base import WorkerRecord

assert os.getpid() == 1, "not in a pid namespace"
work = sys.argv[1]
sentinel = subprocess.Popen(["sleep", "300"])
# The daemon's own process group would be killed by kill(0, ...): put it in one with others.
config = {
    "storage": {"sqlite": {"path": os.path.join(work, "runs.db")}},
    "run_monitoring": {"cancel_timeout_seconds": 0.01, "poll_interval_seconds": 0.05},
}
inst = rc.Instance.from_config(config)
inst.ensure_started()
storage = inst.storage

def stored_run(status, tags):
    # As an old release (or anyone with tag access) left it: worker tags on the run itself.
    run = rc.Run(job_name="victim", status=status, tags=tags, updated_at=time.time() - 60)
    conn = sqlite3.connect(storage.path)
    conn.execute(
        "INSERT INTO runs (run_id, job_name, status, created_at, updated_at, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (run.run_id, run.job_name, status.value, run.created_at, run.updated_at,
         json.dumps({"run_id": run.run_id, "job_name": "victim", "status": status.value,
                     "tags": tags, "created_at": run.created_at, "updated_at": run.updated_at})),
    )
    conn.commit(); conn.close()
    return run.run_id

attacks = {}
for pid in ("-1", "0", "1", str(os.getpgid(0)), str(sentinel.pid), "2**64", "abc"):
    tags = {"runcore/worker_pid": pid, "runcore/worker_kind": "process",
            "runcore/worker_host": hostname()}
    attacks[len(attacks)] = stored_run(rc.RunStatus.CANCELING, tags)

# 1. The monitor force-cancels every one of them: nothing may be signalled.
daemon = rc.Daemon(inst, monitor_interval=0.05)
result = daemon.run_once()
assert sorted(result.monitor.forced_cancels) == sorted(attacks.values()), result
for run_id in attacks.values():
    assert inst.get_run(run_id).status is rc.RunStatus.CANCELED

# 2. A subprocess launcher asked to terminate them (as another process's would): refuses.
launcher = SubprocessRunLauncher()
launcher.start(inst.launcher.context)
for run_id in attacks.values():
    assert launcher.terminate(run_id) is False
    assert launcher.terminate(run_id, force=True) is False

# 3. Forged worker records: wrong start time, a thread host, pids <= 1, our own pid.
def record(pid, **kw):
    handle = kw.pop("handle", None) or process_handle(pid)
    return WorkerRecord(run_id=str(pid), attempt_id="a", kind=kw.pop("kind", "process"),
                        host=kw.pop("host", hostname()), handle=handle)

forged = [
    record(sentinel.pid, handle={"pid": sentinel.pid, "create_time": 12.0}),
    record(sentinel.pid, kind="thread"),
    record(sentinel.pid, host="another-host"),
    record(os.getpid()),
    record(1, handle={"pid": 1, "create_time": process_handle(1)["create_time"]}),
    record(-1, handle={"pid": -1, "create_time": 0.0}),
    record(0, handle={"pid": 0, "create_time": 0.0}),
    record(sentinel.pid, handle={"pid": str(sentinel.pid), "create_time": 1.0}),
    record(sentinel.pid, handle={"pid": True, "create_time": 1.0}),
]
refused = [signal_worker(r, 9) is False for r in forged]

# 4. The control: the right record of a process of its own is signalled.
victim = subprocess.Popen(["sleep", "300"])
signalled = signal_worker(record(victim.pid), 15)
victim.wait(timeout=10)

time.sleep(0.2)
print(json.dumps({
    "sentinel_alive": sentinel.poll() is None,
    "refused": refused,
    "control_signalled": signalled,
    "control_exit": victim.returncode,
}))
sentinel.kill()
"""


def test_no_user_written_pid_is_ever_signalled(tmp_path: Path) -> None:
    seen = in_pid_namespace(SIGNAL_SCENARIO, str(tmp_path))
    assert seen["sentinel_alive"], "a process that is no run's worker was signalled"
    assert all(seen["refused"]), f"a forged worker record was signalled: {seen['refused']}"
    assert seen["control_signalled"] and seen["control_exit"] == -15


# --- parse what is read back -------------------------------------------------------------------


def _insert_raw(path: Path, run_id: str, status: str, body: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO runs (run_id, job_name, status, created_at, updated_at, body) "
        "VALUES (?, 'broken', ?, ?, ?, ?)",
        (run_id, status, time.time() - 100, time.time() - 100, body),
    )
    conn.commit()
    conn.close()


def test_corrupt_rows_are_reported_and_skipped_and_nothing_else_stops(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    config = {
        "storage": {"sqlite": {"path": str(db)}},
        "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
        "run_retries": {"enabled": True, "max_retries": 1},
        "run_monitoring": {"start_timeout_seconds": 1},
    }
    with rc.Instance.from_config(config) as inst:
        job = rc.job("ok_job", [rc.op(name="fine")(lambda: 1)])
        good_failed = inst.create_run(job, tags={"team": "a"})
        for before, after in (
            (rc.RunStatus.NOT_STARTED, rc.RunStatus.STARTING),
            (rc.RunStatus.STARTING, rc.RunStatus.STARTED),
            (rc.RunStatus.STARTED, rc.RunStatus.FAILURE),
        ):
            inst.storage.transition(good_failed.run_id, [before], after)
        bad_json = str(uuid.uuid4())
        _insert_raw(db, bad_json, "STARTED", "{not json")
        bad_retry = rc.Run(
            job_name="broken", status=rc.RunStatus.FAILURE, tags={"runcore/retry_number": "abc"}
        )
        _insert_raw(db, bad_retry.run_id, "FAILURE", _serde.dumps_run(bad_retry))
        bad_id = rc.Run(run_id="../../etc", job_name="broken", status=rc.RunStatus.QUEUED)
        _insert_raw(db, "../../etc", "QUEUED", _serde.dumps_run(bad_id))
        mismatch = rc.Run(job_name="broken", status=rc.RunStatus.SUCCESS)
        _insert_raw(db, mismatch.run_id, "STARTED", _serde.dumps_run(mismatch))
        queued = inst.submit_run(job)

        runs = {run.run_id: run for run in inst.get_runs()}
        for run_id in (bad_json, bad_retry.run_id, "../../etc", mismatch.run_id):
            assert runs[run_id].corrupt, run_id
        assert runs[good_failed.run_id].corrupt is None

        daemon = rc.Daemon(inst)
        result = daemon.run_once()  # every duty passes: none stops on a corrupt row
        assert result.dequeue is not None and result.dequeue.launched == (queued.run_id,)
        assert result.retries is not None
        assert result.retries.submitted, f"the good run was not retried: {result.retries}"
        assert bad_retry.run_id in dict(result.retries.skipped)
        assert inst.get_run(bad_json).status is rc.RunStatus.STARTED  # never acted on
        with pytest.raises(rc.StorageError, match="corrupt"):
            inst.storage.transition(bad_json, [rc.RunStatus.STARTED], rc.RunStatus.FAILURE)

    # The CLI reads the default config of that directory: point it at the database.
    (tmp_path / "runcore.yaml").write_text(f"storage:\n  sqlite:\n    path: {db}\n")
    listed = subprocess.run(
        [sys.executable, "-m", "runcore", "runs", "list", "--limit", "50"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "CORRUPT" in listed.stdout and bad_json in listed.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "runcore", "runs", "show", bad_json],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "CORRUPT" in shown.stdout and "JSON" in shown.stdout


# --- stranded STARTING: the daemon killed mid-launch -------------------------------------------

STRANDED_SCENARIO = r"""
import json, os, subprocess, sys, time
import runcore as rc

assert os.getpid() == 1, "not in a pid namespace"
work, fault = sys.argv[1], sys.argv[2]
os.chdir(work)
sentinel = subprocess.Popen(["sleep", "300"])
with open("pipeline.py", "w") as f:
    f.write("import runcore as rc\n@rc.op\ndef one() -> int:\n    return 1\n"
            "defs = rc.Definitions(jobs=[rc.job('j', [one])])\n")
with open("runcore.yaml", "w") as f:
    f.write(
        "storage: {sqlite: {path: runs.db}}\n"
        "run_coordinator: {class: 'runcore.coordinators:QueuedRunCoordinator'}\n"
        "run_monitoring: {poll_interval_seconds: 0.2, start_timeout_seconds: 120}\n"
    )

def daemon(env):
    return subprocess.Popen([sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

inst = rc.Instance.from_config("runcore.yaml")
run = inst.submit_run("j", code_location=os.path.abspath("pipeline.py") + ":defs")
doomed = daemon({"RUNCORE_FAULT": fault})
code = doomed.wait(timeout=60)
stranded = inst.get_run(run.run_id)
first_attempt = stranded.attempt_id
# Two daemons race to recover it.
rescuers = [daemon({}), daemon({})]
done = inst.wait_for_run(run.run_id, timeout=60)
time.sleep(0.5)  # an orphan of the first attempt, if any, has had time to try
for d in rescuers:
    d.terminate()
    d.wait(timeout=30)
events = inst.get_events(run.run_id)
messages = [e.message for e in events]
print(json.dumps({
    "daemon_exit": code,
    "stranded_status": stranded.status.value,
    "first_attempt": first_attempt,
    "final_status": done.status.value,
    "final_attempt": done.attempt_id,
    "starts": sum(1 for e in events if e.event_type is rc.EventType.RUN_START),
    "requeued": sum(1 for m in messages if "back to the queue" in m),
    "successes": sum(1 for e in events if e.event_type is rc.EventType.RUN_SUCCESS),
    "sentinel_alive": sentinel.poll() is None,
}))
"""


@pytest.mark.parametrize("fault", ["after_starting", "after_spawn"])
def test_a_daemon_killed_mid_launch_leaves_no_run_stranded(tmp_path: Path, fault: str) -> None:
    seen = in_pid_namespace(STRANDED_SCENARIO, str(tmp_path), fault)
    assert seen["daemon_exit"] == -9, "the fault point did not kill the daemon"
    assert seen["stranded_status"] == "STARTING"
    assert seen["final_status"] == "SUCCESS"
    assert seen["starts"] == 1 and seen["successes"] == 1, seen  # exactly once
    assert seen["sentinel_alive"]
    if fault == "after_starting":  # no worker was ever started: the attempt was given up
        assert seen["requeued"] == 1, seen
        assert seen["final_attempt"] != seen["first_attempt"]
    else:  # the orphan recorded itself and ran it, or the attempt was given up: never both
        assert seen["requeued"] in (0, 1), seen


# --- storage identity --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_embedded_daemon_stops_when_its_database_file_goes(tmp_path: Path, how: str) -> None:
    db = tmp_path / "runs.db"
    inst = rc.Instance.from_config({"storage": {"sqlite": {"path": str(db)}}})
    with inst:
        daemon = rc.Daemon(inst, dequeue_interval=0.05, heartbeat_interval=0.05)
        daemon.start()
        time.sleep(0.2)
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        else:
            other = tmp_path / "other.db"
            SqliteStorage(other).start()
            os.replace(other, db)
        deadline = time.monotonic() + 10
        while daemon.is_running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not daemon.is_running, "the daemon went on against a file that is gone"
        with pytest.raises(rc.StorageError, match=how):
            daemon.stop()
        with pytest.raises(rc.StorageError, match=how):
            daemon.run_once()


def test_runcore_daemon_exits_non_zero_when_its_database_is_deleted(tmp_path: Path) -> None:
    (tmp_path / "runcore.yaml").write_text("storage: {sqlite: {path: runs.db}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "runs.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        (tmp_path / "runs.db").unlink()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out + err
    assert "deleted" in err and "StorageError" in err


# --- migration from the tag era ---------------------------------------------------------------


def test_instance_migrate_removes_old_worker_tags(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with SqliteStorage(db) as storage:
        run = storage.add_run(
            rc.Run(
                job_name="old",
                status=rc.RunStatus.STARTED,
                tags={"runcore/worker_pid": "-1", "keep": "me"},
            )
        )
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE workers")
    conn.execute("UPDATE runcore_meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    (tmp_path / "runcore.yaml").write_text("storage: {sqlite: {path: runs.db}}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runcore", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    refused = cli("runs", "list")
    assert refused.returncode == 2 and "runcore instance migrate" in refused.stderr
    migrated = cli("instance", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "from schema version 1 to 3" in migrated.stdout
    shown = cli("runs", "show", run.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["run"]["tags"] == {"keep": "me"}
