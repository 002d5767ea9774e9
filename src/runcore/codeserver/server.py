"""The code server: one code location, imported once, serving non-isolated runs over gRPC.

This module is the server process (:func:`serve`: its token, port, signals and drain);
the gRPC service and the runs it holds are :mod:`runcore.codeserver.service`, its token check
:mod:`runcore.codeserver.auth`.

::

    runcore code-server --location pkg.mod:defs [--host 127.0.0.1] [--port 4266]
                        [--max-workers N] [--run-mode thread|process] [--token SECRET]

A launcher (:class:`~runcore.launchers.code_server.CodeServerRunLauncher`) stores a run in
STARTING and calls ``ExecuteRun(run_id)``. The server checks the run (it exists, is STARTING, its
job is in the served location), queues it, and answers at once. One of ``max_workers`` run
workers picks it up and executes it with :func:`runcore.worker.execution.execute_run` on its thread
(``--run-mode thread``), or waits on a child ``python -m runcore worker execute-run RUN_ID``
(``--run-mode process``). Runs beyond ``max_workers`` wait in the server's queue, counted by
``GetUtilization`` and logged as one JSON line every ``log_interval`` seconds.

Runs and events go to the instance storage named by ``--instance``, which must be one other
processes can open (SQLite, PostgreSQL): the launcher and the server meet there, and nothing
crosses gRPC but run ids and counters.

Stopping: the ``Shutdown`` RPC, SIGTERM or SIGINT drain the server: it refuses new runs, waits
for the runs it holds (up to the RPC's timeout, or :data:`SIGNAL_DRAIN_TIMEOUT` seconds after a
signal; a second signal cuts the wait short), cancels what is left, and stops. The exit code is
0 when every held run ended within the timeout, 1 otherwise.

A server that dies without draining (SIGKILL, a crash) takes its thread-mode runs with it;
launchers then report those runs' workers DEAD, naming the server's address, and the daemon's
run monitoring fails them. In process mode each worker process is told (Linux
``PR_SET_PDEATHSIG``) to cancel its run when the server dies, so no op code outlives it.

Security: every call but ``Ping`` must carry the server's token in the ``runcore-token``
metadata header (else ``UNAUTHENTICATED``), loopback included: any local user can connect to a
loopback port. ``Ping`` stays open for health checks and, without the token, answers only its
echo and the server id. The token is ``--token``, else ``$RUNCORE_CODE_SERVER_TOKEN``, else the
``CodeServerRunLauncher`` token of the instance config, else a generated one written 0600 to
``<home>/code-servers/<host>_<port>.token`` for the launchers of this host to read (see
:mod:`runcore.codeserver.tokens`); without a usable home directory the server refuses to start.
The server binds loopback by default. The channel is not encrypted: outside one host, run it on
a private network.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from runcore.codeserver import tokens
from runcore.codeserver.client import pb2_grpc
from runcore.codeserver.service import RUN_MODES, CodeServer
from runcore.config import without_secrets
from runcore.errors import ConfigError

if TYPE_CHECKING:
    from runcore.config import InstanceConfig


#: Seconds a signal-initiated drain waits for held runs before canceling them.
SIGNAL_DRAIN_TIMEOUT = 30.0
#: The token source of a server that generated its token (and wrote it to a token file).
GENERATED = "generated"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _stop_on_signals(server: CodeServer) -> Iterator[None]:
    """SIGTERM/SIGINT drain the server; a second one cuts the wait short. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal received
        received += 1
        server.request_stop(SIGNAL_DRAIN_TIMEOUT if received == 1 else 0.0, from_signal=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _bind(server: Any, host: str, port: int) -> int:
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound = int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ConfigError(
            f"the code server cannot listen on {address}: {exc}; is the port in use? Pick "
            "another --port (0: any free port)"
        ) from exc
    if bound == 0:
        raise ConfigError(
            f"the code server cannot listen on {address}; is the port in use? Pick another "
            "--port (0: any free port)"
        )
    return bound


def resolve_token(
    token: str | None, cfg: InstanceConfig, host: str, port: int, config_token: str | None = None
) -> tuple[str | None, str]:
    """The server's token and where it comes from; ``(None, ...)``: generate one.

    In order: ``token`` (``--token``), ``$RUNCORE_CODE_SERVER_TOKEN``, the instance config's
    ``CodeServerRunLauncher`` token (``config_token`` if given, else found in ``cfg``). An
    empty ``token`` is a :class:`ConfigError`.
    """
    if token is not None:
        if not token.strip():
            raise ConfigError(
                "--token: the code server's token must not be empty; give a secret (for "
                "example the output of: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), or leave --token out to have one generated"
            )
        return token, "--token"
    env = tokens.env_token()
    if env is not None:
        return env, f"${tokens.TOKEN_ENV}"
    configured = config_token or tokens.config_token(cfg, f"{host}:{port}")
    if configured is not None:
        return configured, "the CodeServerRunLauncher token of the instance config"
    return None, GENERATED


def _server_token(
    token: str | None, config_token: str | None, instance: str, host: str, port: int
) -> tuple[str, str]:
    """The token ``serve`` uses and its source (:data:`GENERATED`: to be written to a file)."""
    from runcore.worker.process import parse_instance

    cfg, _ = parse_instance(instance)
    resolved, source = resolve_token(token, cfg, host, port, config_token)
    if resolved is not None:
        return resolved, source
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host!r} without a token given: it is not a loopback "
            "address, so launchers on other hosts will call it, and they cannot read a token "
            "generated into a file on this host. Give --token (or $RUNCORE_CODE_SERVER_TOKEN) "
            "and the same token to CodeServerRunLauncher, or bind --host 127.0.0.1"
        )
    tokens.prepare_token_dir()  # before the code location is loaded: refuse early if unusable
    return tokens.generate_token(), GENERATED


def _without_secrets(instance: str) -> str:
    """The instance config text for worker processes' command lines: JSON without secrets."""
    import json

    if not instance.lstrip().startswith("{"):
        return instance  # a file path: only the path travels
    return json.dumps(without_secrets(json.loads(instance)))


def _write_token(host: str, port: int, token: str) -> str:
    """Write a generated token to the token file of ``host:port``; returns its path."""
    path = tokens.token_path(host, port)
    tokens.prepare_token_dir()
    tokens.write_token_file(path, token)
    return path


def serve(
    location: str,
    *,
    host: str,
    port: int,
    max_workers: int,
    instance: str,
    run_mode: str,
    token: str | None,
    log_interval: float,
    out: TextIO,
    config_token: str | None = None,
) -> int:
    """Run a code server until it is shut down; returns the exit code (0: a clean drain).

    ``instance`` is the instance config as JSON text or a file path. ``token``: the secret
    every call but ``Ping`` must carry; None: ``$RUNCORE_CODE_SERVER_TOKEN``, else the
    instance config's ``CodeServerRunLauncher`` token, else a generated one, written 0600 to
    ``<home>/code-servers/<host>_<port>.token`` (:mod:`runcore.codeserver.tokens`) and removed
    when the server stops. ``config_token``: the config's launcher token, when the caller
    left it out of ``instance`` (``Instance.config_for_workers`` does: secrets never travel on
    a worker's command line, and in process mode ``instance`` is passed on to each worker).

    Prints to ``out`` where the token comes from (the file's path, never the token), then
    ``runcore code server listening on HOST:PORT (max_workers=N, ...)`` with the actual port
    (``port=0`` picks a free one), then JSON log lines. Raises
    :class:`~runcore.errors.ConfigError` for a bad setting (a non-loopback ``host`` without a
    token given, no usable home directory for a generated token, storage other processes
    cannot open) and :class:`~runcore.errors.CodeLocationError`, with the traceback, when
    ``location`` does not import.
    """
    from runcore.worker.process import load_resources

    if run_mode not in RUN_MODES:
        raise ConfigError(f"--run-mode must be one of {', '.join(RUN_MODES)}, got {run_mode!r}")
    if max_workers < 1:
        raise ConfigError(f"--max-workers must be >= 1, got {max_workers}")
    token, token_source = _server_token(token, config_token, instance, host, port)
    token_file: str | None = None
    resources = load_resources(instance)
    if not resources.storage.shareable:
        raise ConfigError(
            f"the code server's instance storage ({type(resources.storage).__name__}) cannot be "
            "opened by other processes, so launchers could not hand it runs; give --instance "
            "a config with storage: {sqlite: {path: ...}}"
        )
    resources.storage.start()
    try:
        defs = resources.jobs.load(location)
        server = CodeServer(
            location=location,
            defs=defs,
            resources=resources,
            max_workers=max_workers,
            run_mode=run_mode,
            instance_config=_without_secrets(instance),
            log_interval=log_interval,
            log_stream=out,
            token=token,
        )
        rpc_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, min(32, 2 * (os.cpu_count() or 1))),
            thread_name_prefix="runcore-codeserver-rpc",
        )
        grpc_server = grpc.server(
            rpc_pool,
            interceptors=[server.token_check],
            # No SO_REUSEPORT: a second server on a port in use must fail, not share it.
            options=[("grpc.so_reuseport", 0)],
        )
        add_servicer: Any = pb2_grpc.add_CodeServerServicer_to_server
        add_servicer(server, grpc_server)
        bound = _bind(grpc_server, host, port)
        if token_source == GENERATED:
            token_file = _write_token(host, bound, token)
            token_line = f"token generated, written to {token_file} (mode 0600)"
        else:
            token_line = f"token from {token_source}"
        # Signals first: a SIGTERM right after the "listening" line must drain, not kill.
        with _stop_on_signals(server):
            grpc_server.start()
            try:
                # In storage before the "listening" line: whoever waits for it finds it there.
                server.start_heartbeats(f"{host}:{bound}")
                out.write(f"runcore code server requires a token: {token_line}\n")
                out.write(
                    f"runcore code server listening on {host}:{bound} "
                    f"(max_workers={max_workers}, run_mode={run_mode}, location={location})\n"
                )
                out.flush()
                server.start_logging()
                server.wait_for_stop_request()
                clean = server.drain()
            finally:
                grpc_server.stop(grace=2).wait()
                rpc_pool.shutdown(wait=False)
                server.close()
        server.log_event("code_server_stopped", clean=clean)
        return 0 if clean else 1
    finally:
        if token_file is not None:
            tokens.remove_token_file(token_file, token)
        resources.storage.close()
