"""A test-owned PostgreSQL cluster whose host connections need a password (SCRAM-SHA-256).

The machine's shared server trusts every local connection, so it cannot show that a password
is needed, nor that one was passed. :func:`owned_cluster` runs ``initdb`` and ``pg_ctl`` from
PostgreSQL's server binaries into a fresh directory under ``/tmp`` (as the ``postgres`` user
when run as root: ``initdb`` refuses root), listening on 127.0.0.1 and a free port, with
``scram-sha-256`` for host connections and ``trust`` only on its own Unix socket (used once,
to create the role). It yields a :class:`Cluster`; the server is stopped and its directory
removed on exit. About 2 s.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import attrs

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if not BINARIES:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "root without runuser (initdb refuses root)"
    return None


@attrs.frozen
class Cluster:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        """The URL without the password (what may be shown)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def url_with_password(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def owned_cluster(
    password: str, user: str = "runcore", database: str = "runcore"
) -> Iterator[Cluster]:
    """A running cluster with role ``user`` (password ``password``) owning ``database``."""
    problem = missing()
    if problem is not None:
        raise RuntimeError(f"cannot start a PostgreSQL cluster: {problem}")
    bindir = BINARIES[-1]
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pgd = tempfile.mkdtemp(prefix="rc-pgscram-")
    os.chmod(pgd, 0o755)
    if as_owner:
        shutil.chown(pgd, "postgres", "postgres")
    port = _free_port()

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run(
            [*as_owner, *args], input=stdin, check=True, capture_output=True, text=True, timeout=60
        )

    started = False
    try:
        run(
            f"{bindir}/initdb", "-D", f"{pgd}/data", "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        run(
            f"{bindir}/pg_ctl", "-D", f"{pgd}/data", "-l", f"{pgd}/pg.log", "-w", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {pgd} -c fsync=off "
            "-c password_encryption=scram-sha-256",
            "start",
        )  # fmt: skip
        started = True
        # The password goes on psql's standard input, never on a command line.
        escaped = password.replace("'", "''")
        run(
            f"{bindir}/psql", "-h", pgd, "-p", str(port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-q", "-f", "-",
            stdin=f"CREATE ROLE {user} LOGIN PASSWORD '{escaped}';\n"
            f"CREATE DATABASE {database} OWNER {user};\n",
        )  # fmt: skip
        yield Cluster("127.0.0.1", port, user, password, database)
    finally:
        if started:
            subprocess.run(
                [
                    *as_owner,
                    f"{bindir}/pg_ctl",
                    "-D",
                    f"{pgd}/data",
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(pgd, ignore_errors=True)
