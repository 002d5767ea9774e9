"""Many hosts on one PostgreSQL: each "host" is a network namespace with its own host name
(``ip netns`` + ``unshare --uts``), reaching a test-owned PostgreSQL cluster over a veth pair
(``initdb``/``pg_ctl`` on the root namespace's ends; never the machine's shared server). The
setup, shared by both scenarios, is ``tests/_netns_hosts.py``.

* Two hosts, each with a daemon and its subprocess workers, split one queue.
* The daemon on host a, the run workers on host b (a ``runcore code-server`` there, reached over
  a cable between the two namespaces): liveness is judged across that boundary from heartbeats
  in the database, by the database server's clock, the daemon's own clock an hour off.

Needs root, ``ip``, ``unshare``, ``runuser`` and PostgreSQL's server binaries; skipped without
them, except on CI (``CI=true``), where that is a failure. The scenarios stop processes with
signals, so each runs as pid 1 of a child pid namespace, and signals only processes it started.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.test_security import in_pid_namespace

_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "unshare", "runuser", "psql"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not _BIN:
        return "no PostgreSQL server binaries (initdb, pg_ctl)"
    return None


def _scenario(tmp_path: Path, code: str, pipeline: str, config: str, *args: str) -> dict[str, Any]:
    """Run ``code`` after :data:`_PRELUDE` as pid 1 of a child pid namespace, with a project
    directory holding ``pipeline.py`` and ``runcore.yaml`` (:data:`_CONFIG`, then ``config``),
    and ``args`` after the prelude's; the JSON it prints last."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the multi-host test cannot run on CI: {missing}")
        pytest.skip(missing)
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(tmp_path, 0o755)
    (project / "pipeline.py").write_text(textwrap.dedent(pipeline))
    (project / "runcore.yaml").write_text(_CONFIG + textwrap.dedent(config))
    tag = uuid.uuid4().hex[:5]
    tests = str(Path(__file__).parent)
    return in_pid_namespace(_PRELUDE + code, str(project), tag, _BIN[-1], tests, *args)


#: What every scenario's instance has: the cluster, a queue, worker processes for isolated runs.
_CONFIG = """
storage:
  postgres: {schema: runcore, pool: {min: 1, max: 4}}
run_coordinator:
  class: runcore.coordinators:QueuedRunCoordinator
run_launcher:
  class: runcore.launchers:SubprocessRunLauncher
"""

_PRELUDE = r"""
import json, os, sys, time

project, tag, bindir, tests = sys.argv[1:5]
sys.path.insert(0, tests)
from _netns_hosts import hosts
"""

# --- two hosts, a daemon and workers on each ------------------------------------------------------

_SHARED_QUEUE = r"""
with hosts(tag, bindir, ["a", "b"]) as net:
    os.chdir(project)
    import runcore as rc
    from runcore.daemon.core import DAEMON_TYPE

    # This process (the "submitting host") reaches the database over a's veth.
    os.environ["RUNCORE_POSTGRES_URL"] = net.db_url("a")
    inst = rc.Instance.from_config("runcore.yaml")
    for name in ("a", "b"):
        net.spawn(name, [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
                  env={"RUNCORE_POSTGRES_URL": net.db_url(name)}, log=f"daemon-{name}.log")
    time.sleep(1.0)  # both daemons up before the work arrives
    ids = [inst.submit_run("work", code_location="pipeline.py:defs").run_id for _ in range(24)]
    runs = [inst.wait_for_run(run_id, timeout=180) for run_id in ids]
    workers = inst.storage.get_worker_records(ids)
    beats = {b.daemon_id.rsplit("-", 2)[0] for b in inst.storage.get_daemon_heartbeats()
             if b.daemon_type == DAEMON_TYPE}
    in_progress, peak = set(), 0
    for r in inst.storage.get_events_after(None, 100000):
        e = r.event
        if e.event_type is rc.EventType.RUN_STARTING:
            in_progress.add(e.run_id)
        elif e.event_type.value in ("RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED"):
            in_progress.discard(e.run_id)
        peak = max(peak, len(in_progress))
    clients = net.psql("SELECT DISTINCT client_addr FROM pg_stat_activity WHERE application_name "
                       "LIKE 'runcore:%' AND client_addr IS NOT NULL").split()
    print(json.dumps({
        "statuses": sorted({r.status.value for r in runs}),
        "worker_hosts": sorted({w.host for w in workers.values()}),
        "daemon_hosts": sorted(beats),
        "peak": peak,
        "clients": sorted(clients),
        "daemon_logs": {name: net.log(f"daemon-{name}.log")[-3000:] for name in ("a", "b")},
    }))
    inst.close()
"""

_PIPELINE = """
import time
import runcore as rc

@rc.op
def work() -> int:
    time.sleep(0.3)
    return 1

defs = rc.Definitions(jobs=[rc.job("work", [work])])
"""


@pytest.mark.slow
def test_daemons_and_workers_on_two_hosts_share_one_database(tmp_path: Path) -> None:
    result = _scenario(
        tmp_path,
        _SHARED_QUEUE,
        _PIPELINE,
        """
        concurrency:
          runs: {max_concurrent_runs: 4}
        """,
    )
    print(json.dumps(result, indent=1))  # shown if an assertion fails: the daemons' logs
    assert result["statuses"] == ["SUCCESS"]
    assert result["daemon_hosts"] == ["host-a", "host-b"], result
    assert result["worker_hosts"] == ["host-a", "host-b"], "both hosts ran workers"
    assert 1 <= result["peak"] <= 4, "max_concurrent_runs held across hosts"
    assert len(result["clients"]) >= 2, "connections came over both veths"


# --- the daemon on host a, the run workers on host b ----------------------------------------------

#: Seconds the daemon's host clock runs ahead: judged by it, every heartbeat would be an hour old.
SKEW = 3600.0
HEARTBEAT_TIMEOUT = 4.0

_DAEMON_HERE_WORKERS_THERE = r"""
import secrets, signal

SKEW = float(sys.argv[5])
# The daemon's process sees this host's clock an hour ahead (time.time, before runcore loads).
SKEWED = ("import sys, time; real = time.time; time.time = lambda: real() + %r; "
          "from runcore.cli import main; raise SystemExit(main())" % SKEW)

with hosts(tag, bindir, ["a", "b"]) as net:
    # Host b's code server listens on a cable to host a only: the daemon on a reaches it there.
    _, server_ip = net.link("a", "b")
    address = f"{server_ip}:4266"
    os.chdir(project)
    with open("runcore.yaml") as fh:
        config = fh.read().replace("CODE_SERVER_ADDRESS", address)
    with open("runcore.yaml", "w") as fh:
        fh.write(config)

    def until(predicate, what, timeout=90.0):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                logs = {n: net.log(n)[-2000:] for n in ("daemon-a.log", "code-server-1.log")}
                raise AssertionError(f"timed out after {timeout} s waiting for {what}: {logs}")
            time.sleep(0.05)
        return value

    import runcore as rc
    from runcore.codeserver.service import CODE_SERVER_TYPE
    from runcore.daemon.core import DAEMON_TYPE
    from runcore.daemon.retries import retry_run_id

    token = {"RUNCORE_CODE_SERVER_TOKEN": secrets.token_hex(16)}  # non-loopback: one is needed
    os.environ["RUNCORE_POSTGRES_URL"] = net.db_url("a")  # this submitting process: a's veth
    inst = rc.Instance.from_config("runcore.yaml")
    storage = inst.storage
    inst.set_pool_limit("host-b", 4)

    def code_server(log):
        argv = [sys.executable, "-m", "runcore", "code-server", "--location", "pipeline.py:defs",
                "--host", server_ip, "--port", "4266", "--log-interval", "0"]
        return net.spawn("b", argv, env={**token, "RUNCORE_POSTGRES_URL": net.db_url("b")},
                         log=log)

    def serving(old=()):
        # A code server writes its first heartbeat once it listens.
        return next((b for b in storage.get_daemon_heartbeats()
                     if b.daemon_type == CODE_SERVER_TYPE and b.info.get("address") == address
                     and not b.info.get("stopped") and b.info.get("server_id") not in old), None)

    def heartbeating(run_id):
        record = storage.get_worker_record(run_id)
        run = storage.get_run(run_id)
        return (record is not None and record.heartbeat_at is not None
                and run.status is rc.RunStatus.STARTED)

    def db_now():
        return float(net.psql("SELECT EXTRACT(EPOCH FROM clock_timestamp())"))

    server = code_server("code-server-1.log")
    first = until(serving, "the code server on host b")
    net.spawn("a", [sys.executable, "-c", SKEWED, "daemon", "--interval", "0.05"],
              env={**token, "RUNCORE_POSTGRES_URL": net.db_url("a")}, log="daemon-a.log")
    tags = {"runcore/isolation": "non_isolated"}

    # 1. Submitted here, dequeued and watched by the daemon on host a, executed on host b.
    ids = [inst.submit_run("work", code_location="pipeline.py:defs", tags=tags).run_id
           for _ in range(6)]
    done = [inst.wait_for_run(run_id, timeout=120) for run_id in ids]
    workers = storage.get_worker_records(ids)
    daemons = [b for b in storage.get_daemon_heartbeats() if b.daemon_type == DAEMON_TYPE]

    # 2. Host b's code server is killed while it executes a run.
    hung = inst.submit_run("hang", code_location="pipeline.py:defs", tags=tags).run_id
    until(lambda: heartbeating(hung), "the run to start and heartbeat on host b")
    with open(f"/proc/{server.pid}/cmdline", "rb") as fh:
        assert b"code-server" in fh.read(), "the pid we hold is the code server's own"
    # While host b has no code server its pool is closed, as an operator would: the retry
    # waits in the queue instead of being launched at nothing.
    inst.set_pool_limit("host-b", 0)
    server.send_signal(signal.SIGKILL)
    server.wait()
    killed = time.monotonic()
    failed = inst.wait_for_run(hung, timeout=90)
    detected = time.monotonic() - killed
    now = db_now()
    last_beat = storage.get_worker_record(hung).heartbeat_at
    failure = [e for e in inst.get_events(hung) if e.event_type is rc.EventType.RUN_FAILURE][-1]
    daemon_beats = [b.timestamp for b in storage.get_daemon_heartbeats()
                    if b.daemon_type == DAEMON_TYPE]

    # 3. Run retries retry it; the retry runs once a new code server serves on host b.
    retry = retry_run_id(hung)
    until(lambda: (r := storage.get_run(retry)) is not None and r.status is rc.RunStatus.QUEUED,
          "the retry to be queued")
    waiting = str(inst.explain_queued(retry))
    code_server("code-server-2.log")
    second = until(lambda: serving(old={first.info["server_id"]}), "a new code server on b")
    # The daemon's gRPC channel to b retries in the background, at most 2 s (+20 % jitter)
    # apart (grpc.max_reconnect_backoff_ms): give it time to find the new server, so that
    # the retry is not launched into the old connection failure.
    time.sleep(5.0)
    before = storage.get_run(retry).status.value
    inst.set_pool_limit("host-b", 4)
    retried = inst.wait_for_run(retry, timeout=120)
    retry_worker = storage.get_worker_record(retry)
    print(json.dumps({
        "address": address,
        "statuses": sorted({r.status.value for r in done}),
        "worker_kinds": sorted({w.kind for w in workers.values()}),
        "worker_hosts": sorted({w.host for w in workers.values()}),
        "worker_addresses": sorted({w.handle.get("address") for w in workers.values()}),
        "daemon_hosts": sorted({b.info.get("host") for b in daemons}),
        "daemon_ids": sorted({b.daemon_id.rsplit("-", 2)[0] for b in daemons}),
        "server_hosts": [first.info.get("host"), second.info.get("host")],
        "hung": {"status": failed.status.value, "kind": failed.failure_kind.value,
                 "reason": failed.failure_reason, "failed_at": failure.timestamp,
                 "last_beat": last_beat, "detected": detected},
        "db_now": now,
        "daemon_beat": max(daemon_beats),
        "retry": {"waiting": waiting, "before": before, "status": retried.status.value,
                  "reason": retried.failure_reason, "parent": retried.parent_run_id,
                  "number": retried.tags.get("runcore/retry_number"),
                  "host": retry_worker.host, "address": retry_worker.handle.get("address")},
    }))
    inst.close()
"""

_PIPELINE_B = """
import time
import runcore as rc

@rc.op(pool="host-b")
def work() -> int:
    time.sleep(0.3)
    return 1

@rc.op(pool="host-b")
def hang(context: rc.OpContext) -> int:
    if "runcore/retry_number" not in context.tags:  # the first attempt: until it is killed
        context.wait_for_cancel(300)
    return 2

defs = rc.Definitions(jobs=[rc.job("work", [work]), rc.job("hang", [hang])])
"""


@pytest.mark.slow
def test_a_daemon_on_one_host_judges_workers_on_another_by_heartbeats(tmp_path: Path) -> None:
    result = _scenario(
        tmp_path,
        _DAEMON_HERE_WORKERS_THERE,
        _PIPELINE_B,
        f"""
        non_isolated_runs:
          max_concurrent_runs: 4
          launcher:
            class: runcore.launchers.code_server:CodeServerRunLauncher
            config: {{addresses: ["CODE_SERVER_ADDRESS"], timeout: 5}}
        concurrency:
          runs: {{max_concurrent_runs: 4}}
          pools: {{granularity: run}}
        run_monitoring:
          poll_interval_seconds: 0.5
          worker_heartbeat_interval_seconds: 0.5
          worker_heartbeat_timeout_seconds: {HEARTBEAT_TIMEOUT}
        run_retries: {{enabled: true, max_retries: 1}}
        """,
        str(SKEW),
    )
    # Runs from the daemon on host a executed on host b, on its code server.
    assert result["statuses"] == ["SUCCESS"], result
    assert result["worker_kinds"] == ["code_server"], "routed as non-isolated runs"
    assert result["worker_hosts"] == ["host-b"], "the host name the code server reports"
    assert result["worker_addresses"] == [result["address"]]
    assert result["daemon_hosts"] == ["host-a"] and result["daemon_ids"] == ["host-a"]
    assert result["server_hosts"] == ["host-b", "host-b"]

    # The killed server's run failed from heartbeat silence, not an unreachable server or a pid.
    hung = result["hung"]
    assert hung["status"] == "FAILURE" and hung["kind"] == "worker_died", hung
    assert "sent no heartbeat" in hung["reason"], hung
    assert "worker_heartbeat_timeout_seconds" in hung["reason"], hung
    assert "host-b" in hung["reason"], hung
    # The launcher's answer (the server unreachable, so heartbeats decide) may follow as
    # context; the verdict comes first.
    reason = hung["reason"]
    assert "unreachable" not in reason or reason.index("sent no heartbeat") < reason.index(
        "unreachable"
    ), hung
    assert "pid" not in hung["reason"], hung
    # Judged by the database server's clock (both times are the server's): the daemon, its
    # own clock an hour ahead, waited out the timeout after the last heartbeat, and did not
    # fail the healthy runs above as an hour silent.
    silence = hung["failed_at"] - hung["last_beat"]
    assert HEARTBEAT_TIMEOUT <= silence < HEARTBEAT_TIMEOUT + 60, hung
    assert abs(hung["failed_at"] - result["db_now"]) < SKEW / 10, "stamped by the server"
    assert abs(result["daemon_beat"] - result["db_now"]) < SKEW / 10, "the daemon's too"

    # Retried: it waited in the queue while host b had no code server, then ran on the new one.
    retry = result["retry"]
    assert retry["before"] == "QUEUED" and "host-b" in retry["waiting"], retry
    assert retry["status"] == "SUCCESS", retry
    assert retry["number"] == "1" and retry["parent"] is not None
    assert retry["host"] == "host-b" and retry["address"] == result["address"]
