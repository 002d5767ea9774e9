"""Non-isolated runs on long-running code servers (``runcore code-server``), over gRPC.

::

    run_launcher:            # or non_isolated_runs: {launcher: ...}
      class: runcore.launchers.code_server:CodeServerRunLauncher
      config: {addresses: ["10.0.0.5:4266", "10.0.0.6:4266"], token: "...", timeout: 10}

``launch_run`` asks every replica for its utilization at once and hands the run to the least
loaded one that answers (held runs per run worker; ties rotate), trying the next if that one
refuses because it is down or draining. The chosen address is remembered here and written into
the run's worker record (with the host name the replica reports), so that ``terminate`` and
``check_run_worker_health`` reach the right replica from this or any other process. A replica
that cannot be reached makes the health of its runs DEAD, naming its address; the other
replicas' runs are unaffected, and new runs go to the replicas that answer. Across hosts an
unreachable replica may be a failed network, not a dead server: a run on another host whose
worker heartbeats into storage, while run monitoring judges heartbeats, is UNKNOWN instead,
and its heartbeats decide (silence past ``worker_heartbeat_timeout_seconds`` fails it).

gRPC is imported on first use: importing this module (to check a config) does not load it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runcore import _validate
from runcore.errors import ConfigError, RunLaunchError
from runcore.launchers.base import LaunchContext, RunLauncher, WorkerHealth, hostname
from runcore.storage.base import WorkerRecord

if TYPE_CHECKING:
    from runcore.codeserver.client import CodeServerClient, CodeServerError, Utilization
    from runcore.runs import Run

log = logging.getLogger("runcore.launchers")

#: The worker kind of a run held by a code server; its handle is ``{"address": "host:port"}``.
CODE_SERVER_KIND = "code_server"

#: How many run-to-replica entries are kept in memory; older ones are found in storage.
_MEMORY = 10_000


def _check_address(address: object) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(
            f"CodeServerRunLauncher addresses must be 'host:port' strings, got {address!r}"
        )
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"CodeServerRunLauncher address {address!r} is not 'host:port' (e.g. '127.0.0.1:4266')"
        )
    return address.strip()


class CodeServerRunLauncher(RunLauncher):
    """Sends runs to one or more code server replicas; the least utilized live one gets each.

    ``addresses``: the replicas, ``host:port`` each. ``token``: the shared secret the servers
    were started with (``--token``); None: ``$RUNCORE_CODE_SERVER_TOKEN``, else the token file
    each server generated, ``$RUNCORE_HOME/code-servers/<host>_<port>.token`` (default home
    ``./.runcore``), read when first needed and again when a server refuses it (it restarted).
    ``timeout``: seconds each call may take.

    Threads: none of its own. One gRPC channel per replica (gRPC runs its I/O on internal
    threads), opened in :meth:`start` or on first use and closed by :meth:`close`. Runs
    execute in the code servers, so ``close()`` does not wait for them.
    """

    records_workers = True

    def __init__(
        self, addresses: Sequence[str], token: str | None = None, timeout: float = 10.0
    ) -> None:
        if isinstance(addresses, str) or not isinstance(addresses, Sequence) or not addresses:
            raise ConfigError(
                "CodeServerRunLauncher addresses must be a non-empty list of 'host:port' "
                f"strings, got {addresses!r}"
            )
        self.addresses = list(dict.fromkeys(_check_address(a) for a in addresses))
        if token is not None and not isinstance(token, str):
            raise ConfigError("CodeServerRunLauncher token must be a string")
        self.token = token or None
        self.timeout = _validate.duration("CodeServerRunLauncher(timeout=...)", timeout)
        self._lock = threading.Lock()
        self._clients: dict[str, CodeServerClient] = {}
        self._holders: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._turn = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"CodeServerRunLauncher(addresses={self.addresses!r})"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, context: LaunchContext) -> None:
        super().start(context)
        for address in self.addresses:
            self._client(address)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _client(self, address: str) -> CodeServerClient:
        with self._lock:
            if self._closed:
                raise RunLaunchError(f"{self!r} is closed")
            client = self._clients.get(address)
            if client is None:
                try:
                    from runcore.codeserver.client import CodeServerClient
                except ImportError as exc:
                    raise ConfigError(str(exc)) from exc
                client = CodeServerClient(address, token=self.token, timeout=self.timeout)
                self._clients[address] = client
            return client

    # --- where runs are ---------------------------------------------------------------------

    def _remember(self, run_id: str, address: str) -> None:
        with self._lock:
            self._holders[run_id] = address
            self._holders.move_to_end(run_id)
            while len(self._holders) > _MEMORY:
                self._holders.popitem(last=False)

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._holders.pop(run_id, None)

    def holder_of(self, run: Run | str) -> str | None:
        """The address of the replica holding a run: remembered here, else its worker record
        (only one of this launcher's replicas: a record never sends a call elsewhere)."""
        run_id = run if isinstance(run, str) else run.run_id
        with self._lock:
            address = self._holders.get(run_id)
        if address is not None:
            return address
        record = self.context.storage.get_worker_record(run_id)
        if record is None or record.kind != CODE_SERVER_KIND:
            return None
        address = record.handle.get("address")
        return address if isinstance(address, str) and address in self.addresses else None

    # --- the interface ----------------------------------------------------------------------

    def _ranked(self) -> tuple[list[str], list[str]]:
        """Live, accepting replicas from least to most utilized; and why the others are not."""
        from runcore.codeserver.client import CodeServerError

        if len(self.addresses) == 1:
            return list(self.addresses), []  # nothing to choose: ExecuteRun says if it is down
        with self._lock:
            start = self._turn % len(self.addresses)
            self._turn += 1
        order = self.addresses[start:] + self.addresses[:start]  # ties rotate
        pending = []
        problems: list[str] = []
        for address in order:
            try:
                pending.append((address, self._client(address).utilization_future()))
            except CodeServerError as exc:
                problems.append(str(exc))
        loads: list[tuple[float, int, str]] = []
        for position, (address, future) in enumerate(pending):
            try:
                util: Utilization = future.result()
            except CodeServerError as exc:
                problems.append(str(exc))
                continue
            if util.draining:
                problems.append(f"code server {address} is draining (shutting down)")
                continue
            loads.append((util.load, position, address))
        loads.sort()
        return [address for _, _, address in loads], problems

    def launch_run(self, run: Run) -> None:
        from runcore.codeserver.client import CodeServerError

        candidates, problems = self._ranked()
        for address in candidates:
            try:
                accepted = self._client(address).execute_run(run.run_id)
            except CodeServerError as exc:
                if exc.unreachable:
                    problems.append(str(exc))
                    continue  # down or draining since it answered: the next one
                raise RunLaunchError(
                    f"run {run.run_id}: code server {address} refused it: {exc.details}"
                ) from exc
            self._remember(run.run_id, address)
            self.context.storage.record_worker(
                WorkerRecord(
                    run_id=run.run_id,
                    attempt_id=run.attempt_id or "",
                    kind=CODE_SERVER_KIND,
                    host=accepted.hostname or address.rpartition(":")[0],
                    handle={"address": address},
                )
            )
            return
        raise RunLaunchError(
            f"run {run.run_id}: no code server replica could take it (tried "
            f"{', '.join(self.addresses)}): {'; '.join(problems)}"
        )

    def terminate(self, run_id: str, *, force: bool = False) -> bool:
        from runcore.codeserver.client import CodeServerError

        address = self.holder_of(run_id)
        if address is None:
            return False
        try:
            found = self._client(address).cancel_run(run_id)
        except CodeServerError as exc:
            log.warning("run %s: cannot cancel it on its code server: %s", run_id, exc)
            return False
        if not found:
            self._forget(run_id)
        return found

    def check_run_worker_health(self, run: Run) -> WorkerHealth:
        from runcore.codeserver.client import CodeServerError, RemoteRunState

        address = self.holder_of(run)
        if address is None:
            return WorkerHealth.unknown(
                f"no code server of this launcher was recorded for run {run.run_id}"
            )
        try:
            state = self._client(address).get_run_state(run.run_id)
        except CodeServerError as exc:
            if exc.code == "UNAVAILABLE":
                return self._unreachable(run, address, exc.details)
            return WorkerHealth.unknown(_reason(address, exc))
        if state.state is not RemoteRunState.UNKNOWN:
            return WorkerHealth.running()
        self._forget(run.run_id)
        current = self.context.storage.get_run(run.run_id)
        if current is not None and current.status.is_terminal:
            return WorkerHealth.unknown(f"the run has ended {current.status.value}")
        return WorkerHealth.dead(
            f"code server {address} does not hold run {run.run_id} (was it restarted? its "
            f"server id is now {state.server_id})"
        )

    def _unreachable(self, run: Run, address: str, details: str) -> WorkerHealth:
        """The health of a run whose code server cannot be reached: DEAD, unless the server is
        on another host, the run's worker has heartbeat into storage and run monitoring judges
        heartbeats (``heartbeat_timeout``): then UNKNOWN, and heartbeat silence decides, by the
        storage's clock. From here a dead server and a cut network between two hosts look the
        same; the heartbeats the worker writes into the shared storage tell them apart."""
        reason = f"code server {address}, which holds run {run.run_id}, is unreachable: {details}"
        if self.context.heartbeat_timeout is None:
            return WorkerHealth.dead(reason)
        record = self.context.storage.get_worker_record(run.run_id)
        if (
            record is None
            or record.attempt_id != run.attempt_id
            or record.heartbeat_at is None
            or _on_this_host(record.host)
        ):
            return WorkerHealth.dead(reason)
        return WorkerHealth.unknown(
            f"{reason}; it runs on host {record.host!r}, so the run's heartbeats decide "
            f"(run_monitoring.worker_heartbeat_timeout_seconds: "
            f"{self.context.heartbeat_timeout:g})"
        )


def _on_this_host(recorded_host: str) -> bool:
    """Whether a worker record's host is this host: its host name, or a loopback address (what
    is recorded for a server older than the host name in ``ExecuteRun``'s answer)."""
    from runcore.codeserver.server import is_loopback

    return recorded_host == hostname() or is_loopback(recorded_host)


def _reason(address: str, exc: CodeServerError) -> str:
    return f"code server {address} did not answer the health check: {exc}"
