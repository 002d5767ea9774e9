"""The gRPC code server and CodeServerRunLauncher: real servers, real processes, real SQLite.

Every server is a ``python -m runcore code-server`` subprocess on a free loopback port (``--port
0``; the port is read from its "listening" line). The fixtures kill every server they started.
Each test has its own ``$RUNCORE_HOME``: a server started without ``--token`` writes its
generated token there, and the clients and launchers of the test read it from there. The
attacks on the token are in ``test_security_code_server.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import runcore as rc
from runcore.codeserver.client import CodeServerClient, CodeServerError, RemoteRunState
from runcore.codeserver.server import is_loopback
from runcore.daemon.monitoring import RunMonitor
from runcore.launchers.base import HealthStatus, LaunchContext
from runcore.launchers.code_server import CODE_SERVER_KIND, CodeServerRunLauncher
from runcore.storage.base import WorkerRecord
from runcore.testing import LauncherContract, VirtualClock
from runcore.testing.contract_jobs import LOCATION as CONTRACT_LOCATION

LAUNCHER_CLASS = "runcore.launchers.code_server:CodeServerRunLauncher"
WAIT = 20.0

DEFS = '''
import os
import runcore as rc


@rc.op
def report_pid() -> int:
    return os.getpid()


@rc.op
def nap(context: rc.OpContext) -> int:
    """Sleep for the run's ``nap`` tag (seconds), waking early on cancel."""
    context.wait_for_cancel(float(context.tags.get("nap", "30")))
    return os.getpid()


quick = rc.job("quick", [report_pid], description="one fast step")
sleepy = rc.job("sleepy", [nap])
defs = rc.Definitions(jobs=[quick, sleepy])
'''

BROKEN = """
raise ValueError("boom while importing the user's module")
"""


def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class Server:
    process: subprocess.Popen[bytes]
    address: str
    stdout: Path
    stderr: Path
    token: str | None = None

    def client(self, token: str | None = None, timeout: float = 5.0) -> CodeServerClient:
        return CodeServerClient(self.address, token=token, timeout=timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = self.stdout.read_text().splitlines()[1:]
        return [json.loads(line) for line in lines if line.startswith("{")]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@attrs.define
class Env:
    """One test's world: a SQLite instance config, a code location, and server processes."""

    tmp: Path
    location: str
    storage: dict[str, Any]
    servers: list[Server] = attrs.field(factory=list)
    clients: list[CodeServerClient] = attrs.field(factory=list)

    def start(
        self, *args: str, location: str | None = None, wait: bool = True
    ) -> Server | subprocess.Popen[bytes]:
        n = len(self.servers)
        stdout, stderr = self.tmp / f"server{n}.out", self.tmp / f"server{n}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runcore",
                    "code-server",
                    "--location",
                    location or self.location,
                    "--port",
                    "0",
                    "--instance",
                    json.dumps({"storage": self.storage}),
                    *args,
                ],
                stdout=out,
                stderr=err,
                cwd=self.tmp,
            )
        if not wait:
            return process
        token = args[args.index("--token") + 1] if "--token" in args else None
        server = Server(process, "", stdout, stderr, token)
        self.servers.append(server)

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"the code server exited: {stderr.read_text()}")
            found = re.search(r"listening on (\S+):(\d+) ", stdout.read_text())
            return f"{found.group(1)}:{found.group(2)}" if found else None

        server.address = until(listening, "the code server to listen")
        return server

    def server(self, *args: str) -> Server:
        server = self.start(*args)
        assert isinstance(server, Server)
        return server

    def instance(self, addresses: list[str], **launcher_config: Any) -> rc.Instance:
        inst = rc.Instance.from_config(
            {
                "storage": self.storage,
                "run_launcher": {
                    "class": LAUNCHER_CLASS,
                    "config": {"addresses": addresses, **launcher_config},
                },
            }
        )
        inst.ensure_started()
        return inst

    def client(self, server: Server, token: str | None = None) -> CodeServerClient:
        client = server.client(token)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for server in self.servers:
            if server.process.poll() is None:
                # Cancel what it holds (process mode: its worker processes too), then stop.
                with (
                    contextlib.suppress(CodeServerError),
                    contextlib.closing(server.client(server.token)) as client,
                ):
                    client.shutdown(0)
                try:
                    server.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait(timeout=10)


@pytest.fixture(autouse=True)
def runcore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's home directory, shared by its servers (subprocesses) and clients."""
    home = tmp_path / "home"
    monkeypatch.setenv("RUNCORE_HOME", str(home))
    monkeypatch.delenv("RUNCORE_CODE_SERVER_TOKEN", raising=False)
    return home


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    defs = tmp_path / "cs_defs.py"
    defs.write_text(DEFS)
    world = Env(
        tmp=tmp_path,
        location=f"{defs}:defs",
        storage={"sqlite": {"path": str(tmp_path / "runs.db")}},
    )
    try:
        yield world
    finally:
        world.close()


@pytest.fixture
def inst_closer() -> Iterator[list[rc.Instance]]:
    instances: list[rc.Instance] = []
    yield instances
    for inst in instances:
        inst.close()


def step_started(inst: rc.Instance, run_id: str) -> bool:
    return any(e.event_type is rc.EventType.STEP_START for e in inst.get_events(run_id))


# --- the launcher contract ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One code server serving the contract jobs, for the whole contract suite."""
    tmp = tmp_path_factory.mktemp("contract")
    world = Env(
        tmp=tmp, location=CONTRACT_LOCATION, storage={"sqlite": {"path": str(tmp / "runs.db")}}
    )
    try:
        # The module's server outlives each test's $RUNCORE_HOME: it is given its token.
        world.server("--max-workers", "8", "--token", "contract-token")
        yield world
    finally:
        world.close()


class TestCodeServerLauncherContract(LauncherContract):
    """The public launcher contract, against one code server serving the contract jobs."""

    @pytest.fixture
    def instance(self, contract_env: Env) -> Iterator[rc.Instance]:
        server = contract_env.servers[0]
        with contract_env.instance([server.address], token=server.token) as inst:
            yield inst


# --- the server ---------------------------------------------------------------------------------


def test_ping_and_list_jobs(env: Env) -> None:
    server = env.server("--max-workers", "3")
    client = env.client(server)
    info = client.ping()
    assert info.pid == server.process.pid
    assert info.location == env.location
    assert info.run_mode == "thread"
    jobs = {job.name: job for job in client.list_jobs()}
    assert sorted(jobs) == ["quick", "sleepy"]
    assert jobs["quick"].op_names == ("report_pid",)
    assert jobs["quick"].description == "one fast step"
    util = client.get_utilization()
    assert util.as_dict() == {
        "max_concurrent_requests": 3,
        "num_running_requests": 0,
        "num_queued_requests": 0,
    }


def test_a_run_executes_to_success_on_a_server_thread(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    server = env.server()
    inst = env.instance([server.address])
    inst_closer.append(inst)
    run = inst.submit_run("quick", code_location=env.location)
    done = inst.wait_for_run(run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
    types = [e.event_type for e in inst.get_events(run.run_id)]
    assert types[0] is rc.EventType.RUN_STARTING
    assert rc.EventType.STEP_START in types
    assert types[-1] is rc.EventType.RUN_SUCCESS
    # Executed by a thread of the server process; the run names its replica, and no pid
    # that a forced cancel could SIGKILL (it would be the whole server).
    assert inst.output_store.get(run.run_id, "report_pid") == server.process.pid
    worker = inst.storage.get_worker_record(run.run_id)
    assert worker is not None and worker.kind == CODE_SERVER_KIND
    assert worker.handle == {"address": server.address}
    assert worker.host == socket.gethostname()  # the host name the server reports
    assert not any(key.startswith("runcore/") for key in done.tags)
    health = inst.run_launcher.check_run_worker_health(done)
    assert health.status is HealthStatus.UNKNOWN
    assert "ended SUCCESS" in health.reason


def test_runs_beyond_max_workers_queue_in_the_server(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    server = env.server("--max-workers", "2", "--log-interval", "0.1")
    inst = env.instance([server.address])
    inst_closer.append(inst)
    client = env.client(server)
    runs = [inst.submit_run("sleepy", code_location=env.location) for _ in range(5)]

    until(
        lambda: (
            client.get_utilization().as_dict()
            == {"max_concurrent_requests": 2, "num_running_requests": 2, "num_queued_requests": 3}
        ),
        "2 runs executing and 3 queued",
    )
    statuses = sorted(inst.get_run(r.run_id).status.value for r in runs)
    assert statuses == ["STARTED", "STARTED", "STARTING", "STARTING", "STARTING"]
    states = sorted(client.get_run_state(r.run_id).state.value for r in runs)
    assert states == ["QUEUED", "QUEUED", "QUEUED", "RUNNING", "RUNNING"]
    # RPCs do not wait for run workers: they answer while every worker is busy.
    began = time.perf_counter()
    client.ping()
    assert time.perf_counter() - began < 1.0
    until(
        lambda: any(
            line.get("event") == "code_server_utilization"
            and line.get("num_running_requests") == 2
            and line.get("num_queued_requests") == 3
            and line.get("max_concurrent_requests") == 2
            for line in server.log_lines()
        ),
        "a JSON utilization log line saying so",
    )

    # Canceling: queued runs are dropped (no worker ever starts them), executing ones stop.
    queued = [r for r in runs if client.get_run_state(r.run_id).state is RemoteRunState.QUEUED]
    running = [r for r in runs if r not in queued]
    for run in queued + running:
        assert inst.cancel_run(run.run_id)
    for run in runs:
        assert inst.wait_for_run(run.run_id, timeout=WAIT).status is rc.RunStatus.CANCELED
    for run in queued:
        events = inst.get_events(run.run_id)
        assert rc.EventType.RUN_START not in [e.event_type for e in events]
        assert "queued on the code server" in events[-1].message
    assert client.get_utilization().num_queued_requests == 0


def test_cancel_mid_step_ends_canceled(env: Env, inst_closer: list[rc.Instance]) -> None:
    server = env.server()
    inst = env.instance([server.address])
    inst_closer.append(inst)
    run = inst.submit_run("sleepy", code_location=env.location)
    until(lambda: step_started(inst, run.run_id), "the step to start")
    health = inst.run_launcher.check_run_worker_health(inst.get_run(run.run_id))
    assert health.status is HealthStatus.RUNNING
    began = time.monotonic()
    assert inst.cancel_run(run.run_id)
    done = inst.wait_for_run(run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.CANCELED
    assert time.monotonic() - began < 5


def test_process_mode_runs_in_a_child_process_and_cancels(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    server = env.server("--run-mode", "process")
    inst = env.instance([server.address])
    inst_closer.append(inst)
    client = env.client(server)
    assert client.ping().run_mode == "process"

    run = inst.submit_run("quick", code_location=env.location)
    done = inst.wait_for_run(run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
    child_pid = inst.output_store.get(run.run_id, "report_pid")
    assert child_pid not in (server.process.pid, os.getpid())

    slow = inst.submit_run("sleepy", code_location=env.location)
    until(lambda: step_started(inst, slow.run_id), "the step to start")
    state = client.get_run_state(slow.run_id)
    assert state.state is RemoteRunState.RUNNING
    assert state.pid not in (0, server.process.pid)
    assert inst.cancel_run(slow.run_id)
    assert inst.wait_for_run(slow.run_id, timeout=WAIT).status is rc.RunStatus.CANCELED
    until(lambda: client.get_run_state(slow.run_id).state is RemoteRunState.UNKNOWN, "release")
    with pytest.raises(ProcessLookupError):
        os.kill(state.pid, 0)  # the worker process is gone (reaped by the server)


def test_a_killed_server_makes_its_runs_dead(env: Env, inst_closer: list[rc.Instance]) -> None:
    server = env.server()
    inst = env.instance([server.address])
    inst_closer.append(inst)
    run = inst.submit_run("sleepy", code_location=env.location)
    until(lambda: step_started(inst, run.run_id), "the step to start")

    # Another process's launcher (nothing in memory) finds the replica by the run's tag.
    other = CodeServerRunLauncher([server.address])
    other.start(
        LaunchContext(
            storage=inst.storage,
            resolve_job=inst.jobs.resolve,
            output_store=inst.output_store,
        )
    )
    try:
        stored = inst.get_run(run.run_id)
        assert other.check_run_worker_health(stored).status is HealthStatus.RUNNING
        server.kill()
        for launcher in (inst.run_launcher, other):
            health = launcher.check_run_worker_health(stored)
            assert health.status is HealthStatus.DEAD
            assert server.address in health.reason
    finally:
        other.close()

    # The daemon's monitoring acts on it: the run does not stay STARTED.
    rc.Daemon(inst).monitor_once()
    failed = inst.get_run(run.run_id)
    assert failed.status is rc.RunStatus.FAILURE
    assert server.address in (failed.failure_reason or "")


def test_an_unreachable_server_on_another_host_leaves_its_runs_to_their_heartbeats(
    tmp_path: Path,
) -> None:
    """Unreachable from here is not dead on another host (the network between may have
    failed): such a run is UNKNOWN while it heartbeats, and heartbeat silence fails it."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: UNAVAILABLE at once
    cfg = {
        "storage": {"sqlite": {"path": str(tmp_path / "runs.db")}},
        "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
        "run_monitoring": {
            "worker_heartbeat_interval_seconds": 1,
            "worker_heartbeat_timeout_seconds": 5,
        },
    }
    with rc.Instance.from_config(cfg) as inst:
        storage = inst.storage

        def started(host: str, *, beat: bool) -> rc.Run:
            """A STARTED run held, as its worker record says, by the code server at
            ``address`` on ``host``."""
            run = inst.submit_run("pid", code_location=CONTRACT_LOCATION)
            moved = storage.transition(
                run.run_id, [rc.RunStatus.STARTING], rc.RunStatus.STARTED,
                attempt_id=run.attempt_id,
            )  # fmt: skip
            assert moved is not None
            attempt = moved.attempt_id or ""
            storage.record_worker(
                WorkerRecord(
                    run_id=run.run_id,
                    attempt_id=attempt,
                    kind=CODE_SERVER_KIND,
                    host=host,
                    handle={"address": address},
                )
            )
            assert not beat or storage.worker_heartbeat(run.run_id, attempt)
            return moved

        remote = started("host-b", beat=True)
        local = started(socket.gethostname(), beat=True)
        loopback = started("127.0.0.1", beat=True)  # recorded for a server before host names
        silent = started("host-b", beat=False)  # no heartbeat yet: nothing else to judge by

        def launcher(heartbeat_timeout: float | None) -> CodeServerRunLauncher:
            made = CodeServerRunLauncher([address], timeout=2.0)
            made.start(
                LaunchContext(
                    storage=storage,
                    resolve_job=inst.jobs.resolve,
                    output_store=inst.output_store,
                    heartbeat_timeout=heartbeat_timeout,
                )
            )
            return made

        judged, unjudged = launcher(5.0), launcher(None)
        try:
            health = judged.check_workers_health([remote, local, loopback, silent])
            assert health[remote.run_id].status is HealthStatus.UNKNOWN
            assert address in health[remote.run_id].reason
            assert "heartbeats decide" in health[remote.run_id].reason
            for run in (local, loopback, silent):
                assert health[run.run_id].status is HealthStatus.DEAD, run
            # Heartbeats not judged: nothing else would ever end the run, so it is DEAD.
            assert unjudged.check_run_worker_health(remote).status is HealthStatus.DEAD

            # Run monitoring: the remote run lives until its heartbeats stop for the timeout.
            clock = VirtualClock()
            assert inst.config is not None
            monitor = RunMonitor(storage, judged, inst.config.run_monitoring, clock)
            first = monitor.run_once()
            assert remote.run_id not in first.dead_workers
            assert set(first.dead_workers) == {local.run_id, loopback.run_id, silent.run_id}
            clock.advance(6)
            assert monitor.run_once().dead_workers == (remote.run_id,)
        finally:
            judged.close()
            unjudged.close()
        failed = inst.get_run(remote.run_id)
        assert failed.status is rc.RunStatus.FAILURE
        assert failed.failure_kind is rc.FailureKind.WORKER_DIED
        assert "sent no heartbeat" in (failed.failure_reason or "")
        assert "worker_heartbeat_timeout_seconds" in (failed.failure_reason or "")


def holder(inst: rc.Instance, run_id: str) -> str | None:
    """The code server address recorded as the run's worker."""
    record = inst.storage.get_worker_record(run_id)
    return None if record is None else record.handle.get("address")


def test_two_replicas_least_utilized_and_failover(env: Env, inst_closer: list[rc.Instance]) -> None:
    busy = env.server("--max-workers", "4")
    idle = env.server("--max-workers", "4")
    # Load one replica with slow runs, through a launcher that knows only it.
    only_busy = env.instance([busy.address])
    inst_closer.append(only_busy)
    slow = [only_busy.submit_run("sleepy", code_location=env.location) for _ in range(3)]
    assert all(holder(only_busy, r.run_id) == busy.address for r in slow)

    both = env.instance([busy.address, idle.address])
    inst_closer.append(both)
    placed = []
    for _ in range(4):
        run = both.submit_run("quick", code_location=env.location)
        placed.append(holder(both, run.run_id))
        both.wait_for_run(run.run_id, timeout=WAIT)
    assert placed == [idle.address] * 4  # not round-robin: the busy replica is skipped

    # One replica dies: new runs go to the survivor, the survivor's runs keep running.
    idle.kill()
    survivor_run = both.submit_run("quick", code_location=env.location)
    assert holder(both, survivor_run.run_id) == busy.address
    done = both.wait_for_run(survivor_run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
    for run in slow:
        health = both.run_launcher.check_run_worker_health(both.get_run(run.run_id))
        assert health.status is HealthStatus.RUNNING


def test_shutdown_drains_then_stops(env: Env, inst_closer: list[rc.Instance]) -> None:
    server = env.server()
    inst = env.instance([server.address])
    inst_closer.append(inst)
    client = env.client(server)
    run = inst.submit_run("sleepy", tags={"nap": "0.5"}, code_location=env.location)
    until(lambda: step_started(inst, run.run_id), "the step to start")
    assert client.shutdown(10) == 1
    with pytest.raises(CodeServerError, match="draining") as refused:
        client.execute_run(str(uuid.uuid4()))
    assert refused.value.code == "UNAVAILABLE"
    assert server.process.wait(timeout=WAIT) == 0  # a clean drain
    assert inst.get_run(run.run_id).status is rc.RunStatus.SUCCESS


def test_shutdown_timeout_cancels_held_runs(env: Env, inst_closer: list[rc.Instance]) -> None:
    server = env.server("--max-workers", "1")
    inst = env.instance([server.address])
    inst_closer.append(inst)
    running = inst.submit_run("sleepy", code_location=env.location)
    queued = inst.submit_run("sleepy", code_location=env.location)
    until(lambda: step_started(inst, running.run_id), "the step to start")
    env.client(server).shutdown(0.2)
    assert server.process.wait(timeout=WAIT) == 1  # not clean: runs had to be canceled
    for run in (running, queued):
        assert inst.get_run(run.run_id).status is rc.RunStatus.CANCELED


def test_sigterm_drains(env: Env) -> None:
    server = env.server()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=WAIT) == 0
    assert any(line.get("event") == "code_server_stopped" for line in server.log_lines())


# --- bad input ----------------------------------------------------------------------------------


def test_an_unreachable_server_fails_the_run_with_the_reason(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    inst = env.instance([address], timeout=2.0)
    inst_closer.append(inst)
    with pytest.raises(rc.RunLaunchError, match=re.escape(address)):
        inst.submit_run("quick", code_location=env.location)
    [run] = inst.get_runs()
    assert run.status is rc.RunStatus.FAILURE
    assert address in (run.failure_reason or "")
    assert "unreachable" in (run.failure_reason or "")


def test_a_given_token_is_required(
    env: Env, inst_closer: list[rc.Instance], runcore_home: Path
) -> None:
    server = env.server("--token", "s3cret")
    assert "token from --token" in server.stdout.read_text()
    assert not (runcore_home / "code-servers").exists()  # nothing generated, nothing written
    with pytest.raises(CodeServerError, match="requires a token") as missing:
        env.client(server).list_jobs()
    assert missing.value.code == "UNAUTHENTICATED"
    assert "none found" in missing.value.details
    with pytest.raises(CodeServerError, match="does not match") as wrong:
        env.client(server, token="guess").list_jobs()
    assert wrong.value.code == "UNAUTHENTICATED"
    assert env.client(server).ping().pid == 0  # open, but says nothing without the token
    assert env.client(server, token="s3cret").ping().pid == server.process.pid

    wrong_inst = env.instance([server.address], token="guess")
    inst_closer.append(wrong_inst)
    with pytest.raises(rc.RunLaunchError, match="does not match this code server's token"):
        wrong_inst.submit_run("quick", code_location=env.location)

    inst = env.instance([server.address], token="s3cret")
    inst_closer.append(inst)
    run = inst.submit_run("quick", code_location=env.location)
    assert inst.wait_for_run(run.run_id, timeout=WAIT).status is rc.RunStatus.SUCCESS


def test_a_location_that_fails_to_import_stops_the_server(env: Env) -> None:
    broken = env.tmp / "broken_defs.py"
    broken.write_text(BROKEN)
    process = env.start(location=f"{broken}:defs", wait=False)
    assert isinstance(process, subprocess.Popen)
    assert process.wait(timeout=WAIT) != 0
    err = (env.tmp / "server0.err").read_text()
    assert "Traceback" in err
    assert "boom while importing the user's module" in err
    assert "listening" not in (env.tmp / "server0.out").read_text()


def test_execute_run_errors_are_grpc_status_codes(env: Env) -> None:
    server = env.server()
    client = env.client(server)
    nope = str(uuid.uuid4())
    with pytest.raises(CodeServerError, match=f"no run with id '{nope}'") as unknown:
        client.execute_run(nope)
    assert unknown.value.code == "NOT_FOUND"
    for call in (client.execute_run, client.cancel_run, client.get_run_state):
        with pytest.raises(CodeServerError, match="is not a run id") as malformed:
            call("../../etc/passwd")
        assert malformed.value.code == "INVALID_ARGUMENT"

    with rc.Instance.from_config({"storage": env.storage}) as inst:
        storage = inst.storage
        ghost = storage.add_run(rc.Run(job_name="ghost", code_location=env.location))
        storage.transition(ghost.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.STARTING)
        with pytest.raises(CodeServerError, match=r"'ghost'.*does not define") as no_job:
            client.execute_run(ghost.run_id)
        assert no_job.value.code == "NOT_FOUND"

        fresh = storage.add_run(rc.Run(job_name="quick", code_location=env.location))
        with pytest.raises(CodeServerError, match="NOT_STARTED, not STARTING") as early:
            client.execute_run(fresh.run_id)
        assert early.value.code == "FAILED_PRECONDITION"
    assert client.cancel_run(nope) is False
    assert client.get_run_state(nope).state is RemoteRunState.UNKNOWN


def test_a_non_loopback_bind_without_token_is_refused(env: Env) -> None:
    process = env.start("--host", "0.0.0.0", wait=False)
    assert isinstance(process, subprocess.Popen)
    assert process.wait(timeout=WAIT) == 2
    err = (env.tmp / "server0.err").read_text()
    assert "refusing to listen on '0.0.0.0' without a token" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_a_port_in_use_is_refused(env: Env) -> None:
    first = env.server()
    port = first.address.rpartition(":")[2]
    process = env.start("--port", port, wait=False)
    assert isinstance(process, subprocess.Popen)
    assert process.wait(timeout=WAIT) == 2
    err = (env.tmp / "server1.err").read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert first.client().ping().pid == first.process.pid


def test_launcher_config_is_checked() -> None:
    with pytest.raises(rc.ConfigError, match="non-empty list"):
        CodeServerRunLauncher([])
    with pytest.raises(rc.ConfigError, match="not 'host:port'"):
        CodeServerRunLauncher(["localhost"])
    with pytest.raises(rc.ConfigError, match="timeout"):
        CodeServerRunLauncher(["127.0.0.1:1"], timeout=0)
    with pytest.raises(rc.ConfigError, match="has no setting 'adresses'"):
        rc.Instance.from_config(
            {
                "storage": {"in_memory": {}},
                "run_launcher": {"class": LAUNCHER_CLASS, "config": {"adresses": ["x:1"]}},
            }
        )


def test_importing_the_launcher_does_not_import_grpc() -> None:
    code = (
        "import sys, runcore.launchers.code_server\n"
        "print('grpc' in sys.modules, 'google.protobuf' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


def test_process_mode_workers_die_with_a_killed_server(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    server = env.server("--run-mode", "process")
    inst = env.instance([server.address])
    inst_closer.append(inst)
    client = env.client(server)
    run = inst.submit_run("sleepy", code_location=env.location)
    until(lambda: step_started(inst, run.run_id), "the step to start")
    pid = until(lambda: client.get_run_state(run.run_id).pid or None, "the worker's pid")
    server.kill()

    def gone() -> bool:
        import psutil

        try:  # exited: gone, or a zombie until whoever inherited it reaps it
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    try:
        # Bounded by the SQLite busy timeout (30 s) in the worst case: a worker that was
        # writing when its server died finishes that write before it can end the run.
        until(gone, "the worker process to follow its server", timeout=60)
    except AssertionError:
        import psutil

        proc = psutil.Process(pid)
        raise AssertionError(
            f"worker {pid} outlived its server: {proc.status()}, parent {proc.ppid()}, "
            f"{' '.join(proc.cmdline())}"
        ) from None


def test_a_code_server_heartbeats_its_utilization_into_storage(
    env: Env, inst_closer: list[rc.Instance]
) -> None:
    from runcore.codeserver.service import CODE_SERVER_TYPE

    server = env.server("--max-workers", "3")
    inst = env.instance([server.address])
    inst_closer.append(inst)
    beats = [b for b in inst.storage.get_daemon_heartbeats() if b.daemon_type == CODE_SERVER_TYPE]
    (beat,) = [b for b in beats if b.info["address"] == server.address]
    assert beat.daemon_id == f"code-server/{server.address}"
    assert beat.info["max_concurrent_requests"] == 3
    assert beat.info["num_running_requests"] == 0 and beat.info["stopped"] is False
    assert beat.info["pid"] == server.process.pid
