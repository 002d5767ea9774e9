"""A PostgreSQL cluster of the script's own: ``initdb`` into a temporary directory, ``pg_ctl``
on a free port of 127.0.0.1 (trust auth, no TCP elsewhere), restartable mid-run, removed after.

Never the machine's shared server: the chaos run restarts this one. The server binaries are
found under ``/usr/lib/postgresql/<version>/bin`` (the newest), or ``$RUNCORE_PG_BINDIR``.
As root, ``initdb`` and the server run as the ``postgres`` OS user (``runuser``), since
PostgreSQL refuses to run as root; the directory is made theirs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

#: The OS user the server runs as when this process is root.
SERVER_USER = "postgres"


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped (with pg_ctl's own words)."""


def server_bindir() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``/``postgres``, or None if there is none."""
    configured = os.environ.get("RUNCORE_PG_BINDIR")
    candidates = [configured] if configured else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def missing() -> str | None:
    """Why a test-owned cluster cannot be made here, or None."""
    if server_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl); set $RUNCORE_PG_BINDIR"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (initdb refuses root)"
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestCluster:
    """One throw-away cluster: :meth:`start` (initdb + start), :meth:`restart`, :meth:`close`.

    ``url`` names its ``postgres`` database. ``max_connections`` is raised for the many
    processes of a chaos run (each run worker opens its own connections).
    """

    __test__ = False  # not a pytest class

    def __init__(self, *, max_connections: int = 300, prefix: str = "runcore-pg-") -> None:
        bindir = server_bindir()
        if bindir is None:
            raise ClusterError(str(missing()))
        self.bindir = bindir
        self.max_connections = max_connections
        self.prefix = prefix
        self.root: Path | None = None
        self.port = 0

    @property
    def data(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_server_user(self, *args: str | Path) -> list[str]:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *cmd]
        return cmd

    def _run(self, *args: str | Path, timeout: float = 60.0) -> str:
        done = subprocess.run(
            self._as_server_user(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            log = self._log_tail()
            raise ClusterError(
                f"{Path(str(args[0])).name} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}{log}"
            )
        return done.stdout

    def _log_tail(self) -> str:
        if self.root is None:
            return ""
        with contextlib.suppress(OSError):
            lines = (self.root / "server.log").read_text(errors="replace").splitlines()
            return "\nserver log:\n" + "\n".join(lines[-15:])
        return ""

    def start(self) -> Self:
        """initdb into a new temporary directory and start the server on a free port."""
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        self._run(
            self.bindir / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        for attempt in range(5):  # another process may take the free port first
            self.port = free_port()
            try:
                self.start_server()
                return self
            except ClusterError:
                if attempt == 4:
                    raise
        return self

    def start_server(self) -> None:
        """Start the (stopped) server again on its port."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            f"-c max_connections={self.max_connections} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            self.bindir / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.data.parent / "server.log",
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and end every connection;
        ``immediate``: quit at once, crash recovery on the next start)."""
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, outage: float, mode: str = "fast") -> tuple[float, float]:
        """Stop, stay down ``outage`` seconds, start again on the same port; returns
        (seconds the stop took, seconds from the stop's start until the server accepted
        connections again)."""
        began = time.monotonic()
        self.stop(mode)
        stopped = time.monotonic()
        time.sleep(outage)
        self.start_server()
        return stopped - began, time.monotonic() - began

    def close(self, *, remove: bool = True) -> None:
        """Stop the server (immediately) and remove its directory (unless not ``remove``)."""
        if self.root is None:
            return
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
