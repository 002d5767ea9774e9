"""The code server's token, tried as an attacker would: real servers, real gRPC, real files.

A local user who can connect to a loopback port, but cannot read the owner's files, must not
be able to stop the server, launch or cancel runs, or learn anything from ``Ping``. Every server
is a ``python -m runcore code-server`` subprocess on a free loopback port; each test has its own
``$RUNCORE_HOME``.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
from google.protobuf import message_factory

import runcore as rc
from runcore.codeserver import tokens
from runcore.codeserver.client import (
    TOKEN_METADATA_KEY,
    CodeServerClient,
    CodeServerError,
    pb2,
)

LAUNCHER_CLASS = "runcore.launchers.code_server:CodeServerRunLauncher"
WAIT = 20.0

DEFS = """
import runcore as rc


@rc.op
def one() -> int:
    return 1


quick = rc.job("quick", [one])
defs = rc.Definitions(jobs=[quick])
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


@attrs.define
class Server:
    process: subprocess.Popen[bytes]
    address: str
    stdout: Path
    stderr: Path

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


@attrs.define
class World:
    tmp: Path
    home: Path
    location: str
    storage: dict[str, Any]
    servers: list[Server] = attrs.field(factory=list)
    closers: list[Callable[[], None]] = attrs.field(factory=list)

    def start(
        self, *args: str, instance: dict[str, Any] | None = None, config: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a server; its instance is ``--config config``, else ``--instance instance``."""
        n = len(self.servers)
        stdout, stderr = self.tmp / f"server{n}.out", self.tmp / f"server{n}.err"
        before = ["--config", str(config)] if config is not None else []
        instance = instance or {"storage": self.storage}
        after = [] if config is not None else ["--instance", json.dumps(instance)]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runcore",
                    *before,
                    "code-server",
                    "--location",
                    self.location,
                    "--port",
                    "0",
                    "--log-interval",
                    "0",
                    *after,
                    *args,
                ],
                stdout=out,
                stderr=err,
                cwd=self.tmp,
            )
        self.servers.append(Server(process, "", stdout, stderr))
        return process

    def server(
        self, *args: str, instance: dict[str, Any] | None = None, config: Path | None = None
    ) -> Server:
        process = self.start(*args, instance=instance, config=config)
        server = self.servers[-1]

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"the code server exited: {server.stderr.read_text()}")
            found = re.search(r"listening on (\S+):(\d+) ", server.stdout.read_text())
            return f"{found.group(1)}:{found.group(2)}" if found else None

        server.address = until(listening, "the code server to listen")
        return server

    def client(self, server: Server, token: str | None = None) -> CodeServerClient:
        client = CodeServerClient(server.address, token=token, timeout=5.0)
        self.closers.append(client.close)
        return client

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
        self.closers.append(inst.close)
        return inst

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        for server in self.servers:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=10)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    home = tmp_path / "home"
    monkeypatch.setenv("RUNCORE_HOME", str(home))
    monkeypatch.delenv("RUNCORE_CODE_SERVER_TOKEN", raising=False)
    defs = tmp_path / "sec_defs.py"
    defs.write_text(DEFS)
    w = World(
        tmp=tmp_path,
        home=home,
        location=f"{defs}:defs",
        storage={"sqlite": {"path": str(tmp_path / "runs.db")}},
    )
    try:
        yield w
    finally:
        w.close()


def raw_calls(address: str, metadata: tuple[tuple[str, str], ...]) -> dict[str, grpc.StatusCode]:
    """Call every RPC of the service, as an attacker with only ``grpcio`` would; name -> code."""
    service = pb2.DESCRIPTOR.services_by_name["CodeServer"]
    codes: dict[str, grpc.StatusCode] = {}
    with grpc.insecure_channel(address) as channel:
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            reply_class = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                f"/{service.full_name}/{method.name}",
                request_serializer=lambda msg: msg.SerializeToString(),
                response_deserializer=reply_class.FromString,
            )
            try:
                call(request_class(), timeout=5.0, metadata=metadata)
            except grpc.RpcError as exc:
                codes[method.name] = exc.code()
            else:
                codes[method.name] = grpc.StatusCode.OK
    return codes


def token_file(server: Server, home: Path) -> Path:
    return home / "code-servers" / f"127.0.0.1_{server.port}.token"


# --- attacks ------------------------------------------------------------------------------------


def test_a_local_user_without_the_token_cannot_stop_the_server(world: World) -> None:
    server = world.server()
    for metadata in ((), ((TOKEN_METADATA_KEY, "guess"),), ((TOKEN_METADATA_KEY, ""),)):
        codes = raw_calls(server.address, metadata)
        assert codes.pop("Ping") is grpc.StatusCode.OK
        assert set(codes) >= {"Shutdown", "ExecuteRun", "CancelRun", "ListJobs", "GetRunState"}
        assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    time.sleep(0.3)  # a Shutdown that got through would be draining by now
    assert server.process.poll() is None
    assert world.client(server).get_utilization().draining is False  # the owner: the file


def test_ping_is_open_and_reveals_nothing(world: World) -> None:
    server = world.server()
    token = token_file(server, world.home).read_text().strip()
    with grpc.insecure_channel(server.address) as channel:
        ping = channel.unary_unary(
            "/runcore.codeserver.v1.CodeServer/Ping",
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=pb2.PingReply.FromString,
        )
        reply = ping(pb2.PingRequest(echo="hello"), timeout=5.0)
        full = ping(pb2.PingRequest(), timeout=5.0, metadata=((TOKEN_METADATA_KEY, token),))
    assert reply.echo == "hello"
    assert (reply.pid, reply.location, reply.run_mode, reply.runcore_version) == (0, "", "", "")
    assert token not in str(reply)
    assert full.pid == server.process.pid and full.location == world.location
    assert token not in server.output()  # the token itself is never printed


def test_a_wrong_token_is_refused_and_the_right_one_works(world: World) -> None:
    server = world.server("--token", "right-token")
    with pytest.raises(CodeServerError, match="does not match") as wrong:
        world.client(server, token="wrong-token").shutdown(0)
    assert wrong.value.code == "UNAUTHENTICATED"
    assert server.process.poll() is None
    assert world.client(server, token="right-token").shutdown(0) == 0
    assert server.process.wait(timeout=WAIT) == 0


# --- the generated token file -------------------------------------------------------------------


def test_a_generated_token_file_is_private_and_launchers_use_it(world: World) -> None:
    server = world.server()
    path = token_file(server, world.home)  # named by the bound port, not the 0 asked for
    assert f"written to {path} (mode 0600)" in server.stdout.read_text()
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE((world.home / "code-servers").stat().st_mode) == 0o700
    assert len(path.read_text().strip()) >= 40  # 32 random bytes

    inst = world.instance([server.address])  # no token configured: the file
    run = inst.submit_run("quick", code_location=world.location)
    done = inst.wait_for_run(run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.SUCCESS, done.failure_reason

    assert world.client(server).shutdown(5) == 0
    assert server.process.wait(timeout=WAIT) == 0
    assert not path.exists()  # removed on a clean stop


def test_a_restarted_server_s_new_token_is_read_again(world: World) -> None:
    first = world.server()
    inst = world.instance([first.address])
    run = inst.submit_run("quick", code_location=world.location)
    assert inst.wait_for_run(run.run_id, timeout=WAIT).status is rc.RunStatus.SUCCESS
    old = token_file(first, world.home).read_text()
    world.client(first).shutdown(5)
    assert first.process.wait(timeout=WAIT) == 0

    second = world.server("--port", str(first.port))
    assert token_file(second, world.home).read_text() != old
    run = inst.submit_run("quick", code_location=world.location)  # the same launcher
    done = inst.wait_for_run(run.run_id, timeout=WAIT)
    assert done.status is rc.RunStatus.SUCCESS, done.failure_reason


def test_a_token_file_others_may_read_is_refused(world: World) -> None:
    server = world.server()
    path = token_file(server, world.home)
    path.chmod(0o644)
    with pytest.raises(CodeServerError, match=r"mode is 0644.*must be 0600") as loose:
        world.client(server).list_jobs()
    assert loose.value.code == "UNAUTHENTICATED"
    inst = world.instance([server.address])
    with pytest.raises(rc.RunLaunchError, match="must be 0600"):
        inst.submit_run("quick", code_location=world.location)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_token_file_of_another_user_is_refused(world: World) -> None:
    server = world.server()
    path = token_file(server, world.home)
    os.chown(path, 65534, 65534)
    with pytest.raises(CodeServerError, match="belongs to another user"):
        world.client(server).list_jobs()


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.token"
    real.write_text("secret\n")
    real.chmod(0o600)
    link = tmp_path / "link.token"
    link.symlink_to(real)
    with pytest.raises(rc.ConfigError, match="symbolic link"):
        tokens.read_token_file(str(link))
    assert tokens.read_token_file(str(real)) == "secret"
    assert tokens.read_token_file(str(tmp_path / "missing.token")) is None


def test_without_a_usable_home_the_server_refuses_to_start(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = world.tmp / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RUNCORE_HOME", str(blocker / "home"))
    process = world.start()
    assert process.wait(timeout=WAIT) == 2
    err = world.servers[-1].stderr.read_text()
    assert "ConfigError" in err and "cannot keep a generated one" in err
    assert "--token" in err and "RUNCORE_CODE_SERVER_TOKEN" in err
    assert "listening" not in world.servers[-1].stdout.read_text()

    server = world.server("--token", "given")  # a given token needs no home
    assert world.client(server, token="given").list_jobs()[0].name == "quick"


def test_an_empty_token_is_refused(world: World) -> None:
    process = world.start("--token", " ")
    assert process.wait(timeout=WAIT) == 2
    assert "must not be empty" in world.servers[-1].stderr.read_text()


# --- other token sources ------------------------------------------------------------------------


def test_the_environment_token_serves_server_and_launcher(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNCORE_CODE_SERVER_TOKEN", "from-the-env")
    server = world.server()
    assert "token from $RUNCORE_CODE_SERVER_TOKEN" in server.stdout.read_text()
    assert not (world.home / "code-servers").exists()
    inst = world.instance([server.address])
    run = inst.submit_run("quick", code_location=world.location)
    assert inst.wait_for_run(run.run_id, timeout=WAIT).status is rc.RunStatus.SUCCESS
    with pytest.raises(CodeServerError, match="does not match"):
        world.client(server, token="other").list_jobs()


def test_the_config_token_serves_server_and_launcher(world: World) -> None:
    config = {
        "storage": world.storage,
        "run_launcher": {
            "class": LAUNCHER_CLASS,
            "config": {"addresses": ["127.0.0.1:4266"], "token": "from-the-config"},
        },
    }
    server = world.server(instance=config)
    assert "token from the CodeServerRunLauncher token" in server.stdout.read_text()
    assert not (world.home / "code-servers").exists()
    with pytest.raises(CodeServerError, match="requires a token"):
        world.client(server).list_jobs()
    inst = world.instance([server.address], token="from-the-config")
    run = inst.submit_run("quick", code_location=world.location)
    assert inst.wait_for_run(run.run_id, timeout=WAIT).status is rc.RunStatus.SUCCESS


def test_a_config_file_token_reaches_the_server_but_no_worker_command_line(world: World) -> None:
    config = world.tmp / "runcore.yaml"
    config.write_text(
        json.dumps(
            {
                "storage": world.storage,
                "non_isolated_runs": {
                    "launcher": {
                        "class": LAUNCHER_CLASS,
                        "config": {"addresses": ["127.0.0.1:4266"], "token": "config-secret"},
                    }
                },
            }
        )
    )
    server = world.server(config=config)  # `runcore --config FILE code-server`
    assert "token from the CodeServerRunLauncher token" in server.stdout.read_text()
    assert world.client(server, token="config-secret").list_jobs()[0].name == "quick"
    assert "config-secret" not in " ".join(server.process.args)  # type: ignore[arg-type]

    # What any worker process gets on its command line (readable by every local user).
    with rc.Instance.from_config(str(config)) as inst:
        assert "config-secret" not in json.dumps(inst.config_for_workers())
