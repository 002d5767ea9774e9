"""Many hosts on one PostgreSQL: each "host" is a network namespace with its own hostname
(``ip netns`` + ``unshare --uts``), reaching a test-owned PostgreSQL cluster over a veth pair
(``initdb``/``pg_ctl`` on the host side's addresses; never the machine's shared server).

Needs root, ``ip``, ``unshare`` and PostgreSQL's server binaries; skipped without them, except
on CI (``CI=true``), where that is a failure. The scenario stops processes with signals, so it
runs as pid 1 of a child pid namespace.
"""

from __future__ import annotations

import glob
import os
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest
from tests.test_security import in_pid_namespace

_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "unshare", "runuser"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not _BIN:
        return "no PostgreSQL server binaries (initdb, pg_ctl)"
    return None


_SCENARIO = r"""
import json, os, random, subprocess, sys, tempfile, time

project, tag, bindir = sys.argv[1], sys.argv[2], sys.argv[3]
port = str(random.randint(20000, 30000))
net = f"10.{random.randint(100, 250)}"

def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)

hosts = {"a": f"{net}.1", "b": f"{net}.2"}  # the host-side address each namespace reaches
pgd = tempfile.mkdtemp(prefix="rc-pghosts-")
os.chmod(pgd, 0o755)
sh("chown", "postgres:", pgd)
created = []
daemons = []
try:
    for name, addr in hosts.items():
        ns, veth = f"rc{tag}{name}", f"rc{tag}{name}"
        sh("ip", "netns", "add", ns); created.append(ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "n")
        sh("ip", "link", "set", veth + "n", "netns", ns)
        sh("ip", "addr", "add", f"{addr}.1/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}.2/24", "dev", veth + "n")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", veth + "n", "up")
    sh("runuser", "-u", "postgres", "--", f"{bindir}/initdb", "-D", f"{pgd}/data", "-U",
       "postgres", "--auth=trust")
    with open(f"{pgd}/data/pg_hba.conf", "a") as hba:
        hba.write(f"host all all {net}.0.0/16 trust\n")
    listen = ",".join(f"{addr}.1" for addr in hosts.values())
    sh("runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", f"{pgd}/data", "-l",
       f"{pgd}/pg.log", "-w", "-o", f"-c listen_addresses={listen} -p {port} -k {pgd} "
       "-c fsync=off -c max_connections=200", "start")
    os.chdir(project)
    import runcore as rc
    # This process (the "submitting host") uses the first veth's address, from the root namespace.
    os.environ["RUNCORE_POSTGRES_URL"] = f"postgresql://postgres@{hosts['a']}.1:{port}/postgres"
    inst = rc.Instance.from_config("runcore.yaml")
    for name, addr in hosts.items():
        env = {**os.environ, "RUNCORE_POSTGRES_URL": f"postgresql://postgres@{addr}.1:{port}/postgres"}
        daemons.append(subprocess.Popen(
            ["ip", "netns", "exec", f"rc{tag}{name}", "unshare", "--uts", "sh", "-c",
             f"hostname host-{name} && exec {sys.executable} -m runcore daemon --interval 0.05"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{pgd}/daemon-{name}.log", "w"),
        ))
    time.sleep(1.0)  # both daemons up before the work arrives
    ids = [inst.submit_run("work", code_location="pipeline.py:defs").run_id for _ in range(24)]
    runs = [inst.wait_for_run(run_id, timeout=180) for run_id in ids]
    workers = inst.storage.get_worker_records(ids)
    from runcore.daemon.core import DAEMON_TYPE
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
    clients = sh("psql", "-h", f"{hosts['a']}.1", "-p", port, "-U", "postgres", "-tAc",
                 "SELECT DISTINCT client_addr FROM pg_stat_activity WHERE application_name LIKE "
                 "'runcore:%' AND client_addr IS NOT NULL", "postgres").stdout.split()
    print(json.dumps({
        "statuses": sorted({r.status.value for r in runs}),
        "worker_hosts": sorted({w.host for w in workers.values()}),
        "daemon_hosts": sorted(beats),
        "peak": peak,
        "clients": sorted(clients),
    }))
    inst.close()
finally:
    for d in daemons:
        d.terminate()
    for d in daemons:
        try:
            d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            d.kill()
    sh("runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", f"{pgd}/data", "-m",
       "immediate", "-w", "stop", check=False)
    for ns in created:
        sh("ip", "netns", "del", ns, check=False)
    for name in hosts:
        sh("ip", "link", "del", f"rc{tag}{name}", check=False)
    sh("rm", "-rf", pgd, check=False)
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
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the multi-host test cannot run on CI: {missing}")
        pytest.skip(missing)
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(tmp_path, 0o755)
    (project / "pipeline.py").write_text(textwrap.dedent(_PIPELINE))
    (project / "runcore.yaml").write_text(
        textwrap.dedent(
            """
            storage:
              postgres: {schema: runcore, pool: {min: 1, max: 4}}
            run_coordinator:
              class: runcore.coordinators:QueuedRunCoordinator
            run_launcher:
              class: runcore.launchers:SubprocessRunLauncher
            concurrency:
              runs: {max_concurrent_runs: 4}
            """
        )
    )
    tag = uuid.uuid4().hex[:5]
    result = in_pid_namespace(_SCENARIO, str(project), tag, _BIN[-1])
    assert result["statuses"] == ["SUCCESS"]
    assert result["daemon_hosts"] == ["host-a", "host-b"], result
    assert result["worker_hosts"] == ["host-a", "host-b"], "both hosts ran workers"
    assert 1 <= result["peak"] <= 4, "max_concurrent_runs held across hosts"
    assert len(result["clients"]) >= 2, "connections came over both veths"
