"""A client of one code server replica, with gRPC errors translated at the boundary.

Every call has a deadline (``timeout`` seconds) and carries the shared-secret token in the
``runcore-token`` metadata header: the token the client was given, else
``$RUNCORE_CODE_SERVER_TOKEN``, else the token file the server at that address generated
(see :mod:`runcore.codeserver.tokens`; re-read when the server refuses it, as after a restart).
A failed call raises
:class:`CodeServerError` (``raise ... from`` the ``grpc.RpcError``) whose message names the
address; :attr:`CodeServerError.unreachable` tells a server that cannot be reached (down,
wrong address, draining) from one that answered with an error.
"""

from __future__ import annotations

import enum
import threading
from typing import Any

import attrs

from runcore import _validate
from runcore.codeserver import tokens
from runcore.config import HOME_ENV
from runcore.errors import ConfigError, RuncoreError

try:
    import grpc

    from runcore.codeserver import runcore_pb2 as pb2
    from runcore.codeserver import runcore_pb2_grpc as pb2_grpc
except Exception as exc:  # ImportError; protobuf's VersionError; the stubs' grpc RuntimeError
    raise ImportError(
        f"runcore's code server cannot load gRPC and its generated stubs ({exc}); it needs "
        "grpcio>=1.72.2 and protobuf>=6.30: pip install -U 'grpcio>=1.72.2' 'protobuf>=6.30'"
    ) from exc

__all__ = [
    "TOKEN_METADATA_KEY",
    "AcceptedRun",
    "CodeServerClient",
    "CodeServerError",
    "JobInfo",
    "RemoteRunState",
    "RunStateInfo",
    "ServerInfo",
    "Utilization",
    "UtilizationFuture",
    "pb2",
    "pb2_grpc",
]

#: The metadata key that carries the shared-secret token.
TOKEN_METADATA_KEY = "runcore-token"

#: How a draining server's UNAVAILABLE answer to ExecuteRun begins.
DRAINING_MESSAGE = "this code server is draining"

#: Reconnect quickly after a replica restarts (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


class CodeServerError(RuncoreError):
    """A code server call failed. ``code`` is the gRPC status name (``"NOT_FOUND"``, ...)."""

    def __init__(self, message: str, *, address: str, code: str, details: str) -> None:
        super().__init__(message)
        self.address = address
        self.code = code
        self.details = details

    @property
    def unreachable(self) -> bool:
        """Whether the server could not be reached or did not answer in time."""
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


class RemoteRunState(enum.Enum):
    """Whether a server holds a run: not at all, queued for a run worker, or executing."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"

    @classmethod
    def from_proto(cls, value: int) -> RemoteRunState:
        """From the proto enum's number."""
        return _STATE_FROM_PROTO.get(value, cls.UNKNOWN)


_STATE_FROM_PROTO: dict[int, RemoteRunState] = {
    pb2.RUN_STATE_UNKNOWN: RemoteRunState.UNKNOWN,
    pb2.RUN_STATE_QUEUED: RemoteRunState.QUEUED,
    pb2.RUN_STATE_RUNNING: RemoteRunState.RUNNING,
}


@attrs.frozen
class ServerInfo:
    """A ``Ping`` answer: who the server is. ``server_id`` changes when it restarts."""

    server_id: str
    pid: int
    location: str
    run_mode: str
    runcore_version: str


@attrs.frozen
class JobInfo:
    """One job of the served code location."""

    name: str
    description: str
    op_names: tuple[str, ...]
    tags: dict[str, str]


@attrs.frozen
class Utilization:
    """How busy a server's run workers are."""

    max_concurrent_requests: int
    num_running_requests: int
    num_queued_requests: int
    draining: bool = False

    @property
    def load(self) -> float:
        """Held runs (executing and queued) per run worker: 0 idle, 1 full, > 1 queueing."""
        held = self.num_running_requests + self.num_queued_requests
        return held / max(1, self.max_concurrent_requests)

    @classmethod
    def from_proto(cls, msg: pb2.Utilization) -> Utilization:
        """From the proto message."""
        return cls(
            max_concurrent_requests=msg.max_concurrent_requests,
            num_running_requests=msg.num_running_requests,
            num_queued_requests=msg.num_queued_requests,
            draining=msg.draining,
        )

    def as_dict(self) -> dict[str, int]:
        """The three counters, as logged and as ``GetUtilization`` documents them."""
        return {
            "max_concurrent_requests": self.max_concurrent_requests,
            "num_running_requests": self.num_running_requests,
            "num_queued_requests": self.num_queued_requests,
        }


@attrs.frozen
class RunStateInfo:
    """A ``GetRunState`` answer; ``pid`` is the process executing the run (0: none)."""

    state: RemoteRunState
    pid: int
    server_id: str


@attrs.frozen
class AcceptedRun:
    """An ``ExecuteRun`` answer: the run's state on the server, and the host name of the
    server's machine (empty from a server older than that field)."""

    state: RemoteRunState
    hostname: str


def _describe(address: str, code: str, details: str) -> str:
    if code == "UNAVAILABLE" and details.startswith(DRAINING_MESSAGE):
        return f"code server {address}: {details}"
    if code == "UNAVAILABLE":
        return (
            f"code server {address} is unreachable ({details}); check that "
            f"`runcore code-server` is running there and that the address is right"
        )
    if code == "DEADLINE_EXCEEDED":
        return f"code server {address} did not answer in time ({details})"
    return f"code server {address}: {code}: {details}"


class UtilizationFuture:
    """A ``GetUtilization`` call in flight (see :meth:`CodeServerClient.utilization_future`)."""

    def __init__(self, client: CodeServerClient, future: Any) -> None:
        self._client = client
        self._future = future

    def result(self) -> Utilization:
        """The answer; :class:`CodeServerError` if the call failed."""
        try:
            reply = self._future.result()
        except grpc.RpcError as exc:
            raise self._client.translate(exc) from exc
        return Utilization.from_proto(reply)


class CodeServerClient:
    """Calls one code server at ``address`` (``host:port``).

    The constructor does no I/O; the channel is opened on the first call and closed by
    :meth:`close`. Safe to share between threads.

    Threads: none of its own; gRPC runs its channel I/O on its internal threads until
    :meth:`close`.
    """

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = _validate.duration("CodeServerClient(timeout=...)", timeout)
        self._token = token or None
        self._file_token: str | None = None  # read from the token file, kept until refused
        self._lock = threading.Lock()
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return f"CodeServerClient({self.address!r})"

    def _get_stub(self) -> Any:
        with self._lock:
            if self._closed:
                raise CodeServerError(
                    f"the client of code server {self.address} is closed",
                    address=self.address,
                    code="CANCELLED",
                    details="client closed",
                )
            if self._stub is None:
                self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
                stub_class: Any = pb2_grpc.CodeServerStub
                self._stub = stub_class(self._channel)
            return self._stub

    # --- the token --------------------------------------------------------------------------

    def token_file(self) -> str:
        """Where this client looks for a generated token: the token file of its address."""
        host, _, port = self.address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"code server address {self.address!r} is not 'host:port'")
        return tokens.token_path(host, int(port))

    def _current_token(self) -> tuple[str | None, str]:
        """The token to send and where it came from (configured, environment, file)."""
        if self._token is not None:
            return self._token, "the client's configured token"
        env = tokens.env_token()
        if env is not None:
            return env, f"${tokens.TOKEN_ENV}"
        path = self.token_file()
        with self._lock:
            cached = self._file_token
        if cached is None:
            try:
                cached = tokens.read_token_file(path)
            except ConfigError as exc:
                raise CodeServerError(
                    f"code server {self.address}: {exc}",
                    address=self.address,
                    code="UNAUTHENTICATED",
                    details=str(exc),
                ) from exc
            with self._lock:
                self._file_token = cached
        if cached is None:
            return None, (
                f"none found; looked at the client's token (none configured), "
                f"${tokens.TOKEN_ENV} (not set) and the token file {path} (missing; a server "
                f"started without a token writes it under its ${HOME_ENV}, default ./.runcore)"
            )
        return cached, f"the token file {path}"

    def _forget_file_token(self) -> bool:
        """Drop a token read from the file (the server refused it); True if there was one."""
        with self._lock:
            had, self._file_token = self._file_token is not None, None
        return had

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token, _ = self._current_token()
        return ((TOKEN_METADATA_KEY, token),) if token else ()

    def translate(self, exc: Any) -> CodeServerError:
        """A ``grpc.RpcError`` as a :class:`CodeServerError` naming this server."""
        code_obj = exc.code() if hasattr(exc, "code") else None
        code = getattr(code_obj, "name", "UNKNOWN")
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        if code == "UNAUTHENTICATED":
            try:
                _, source = self._current_token()
            except RuncoreError as token_exc:
                source = str(token_exc)
            self._forget_file_token()  # the next call reads the file again
            details = f"{details} [token sent: {source}]"
        return CodeServerError(
            _describe(self.address, code, details), address=self.address, code=code, details=details
        )

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        stub = self._get_stub()
        for attempt in (1, 2):
            token_from_file = self._token is None and tokens.env_token() is None
            try:
                metadata = self._metadata()
                return getattr(stub, method)(
                    request, timeout=self.timeout if timeout is None else timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                refused = getattr(code, "name", "") == "UNAUTHENTICATED"
                # A token read from the file may be stale (the server restarted with a new
                # one): read the file again and retry once.
                if (
                    attempt == 1
                    and refused
                    and token_from_file
                    and self._forget_file_token()
                    and self._metadata() not in ((), metadata)
                ):
                    continue
                raise self.translate(exc) from exc
        raise AssertionError("unreachable")

    # --- the RPCs ---------------------------------------------------------------------------

    def ping(self, timeout: float | None = None) -> ServerInfo:
        """Who the server is; :class:`CodeServerError` if it does not answer."""
        reply = self._call("Ping", pb2.PingRequest(), timeout)
        return ServerInfo(
            server_id=reply.server_id,
            pid=reply.pid,
            location=reply.location,
            run_mode=reply.run_mode,
            runcore_version=reply.runcore_version,
        )

    def list_jobs(self) -> list[JobInfo]:
        """The jobs of the served code location."""
        reply = self._call("ListJobs", pb2.ListJobsRequest())
        return [
            JobInfo(
                name=job.name,
                description=job.description,
                op_names=tuple(job.op_names),
                tags=dict(job.tags),
            )
            for job in reply.jobs
        ]

    def execute_run(self, run_id: str) -> AcceptedRun:
        """Hand the server stored run ``run_id`` (STARTING); returns once it is queued there,
        with the run's state and the server's host name.

        :class:`CodeServerError` with ``NOT_FOUND`` (unknown run or job),
        ``FAILED_PRECONDITION`` (not STARTING), ``ALREADY_EXISTS`` (held already),
        ``UNAVAILABLE`` (unreachable or draining).
        """
        reply = self._call("ExecuteRun", pb2.ExecuteRunRequest(run_id=run_id))
        return AcceptedRun(state=RemoteRunState.from_proto(reply.state), hostname=reply.hostname)

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a run the server holds; False if it does not hold it."""
        reply = self._call("CancelRun", pb2.CancelRunRequest(run_id=run_id))
        return bool(reply.found)

    def get_run_state(self, run_id: str) -> RunStateInfo:
        """Whether the server holds ``run_id``, queued or executing."""
        reply = self._call("GetRunState", pb2.GetRunStateRequest(run_id=run_id))
        return RunStateInfo(
            state=RemoteRunState.from_proto(reply.state), pid=reply.pid, server_id=reply.server_id
        )

    def get_utilization(self) -> Utilization:
        """How busy the server's run workers are."""
        return Utilization.from_proto(self._call("GetUtilization", pb2.GetUtilizationRequest()))

    def utilization_future(self) -> UtilizationFuture:
        """Start a ``GetUtilization`` call without waiting (to ask many replicas at once)."""
        stub = self._get_stub()
        future = stub.GetUtilization.future(
            pb2.GetUtilizationRequest(), timeout=self.timeout, metadata=self._metadata()
        )
        return UtilizationFuture(self, future)

    def shutdown(self, timeout_seconds: float) -> int:
        """Ask the server to drain and stop; returns how many runs it held. Returns at once."""
        reply = self._call("Shutdown", pb2.ShutdownRequest(timeout_seconds=timeout_seconds))
        return int(reply.in_flight_runs)

    def close(self) -> None:
        """Close the channel; later calls raise :class:`CodeServerError`."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()
