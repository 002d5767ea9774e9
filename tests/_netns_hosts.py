"""Separate "hosts" for the multi-host tests: network namespaces, each with its own host name
(``ip netns`` + ``unshare --uts``), reaching one test-owned PostgreSQL cluster over a veth pair
(``initdb``/``pg_ctl`` listening on the root namespace's ends; never the machine's shared
server). Namespaces may also be cabled to each other directly (:meth:`Hosts.link`): traffic
between them never passes through the root namespace, so no sysctl, bridge or firewall rule
of the machine is touched.

Used by the scenarios of ``tests/test_postgres_hosts.py``, which run as root as pid 1 of a child
pid namespace: :func:`hosts` removes every namespace, link, process, cluster and directory it
created when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


class Hosts:
    """The namespaces ``names`` ("hosts"), the cluster, and the processes started in them."""

    def __init__(self, tag: str, names: Sequence[str], pgd: str) -> None:
        self.tag = tag
        self.names = list(names)
        self.pgd = pgd
        self.port = str(random.randint(20000, 30000))
        self.net = f"10.{random.randint(100, 250)}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.links: list[str] = []
        self._logs: list[IO[str]] = []

    def ns(self, name: str) -> str:
        """The network namespace of host ``name`` (also its veth's name in the root one)."""
        return f"rc{self.tag}{name}"

    def _subnet(self, name: str) -> str:
        return f"{self.net}.{self.names.index(name) + 1}"

    def address(self, name: str) -> str:
        """Host ``name``'s own address on its veth to the database."""
        return f"{self._subnet(name)}.2"

    def db_url(self, name: str) -> str:
        """The database URL as host ``name`` reaches it: over its own veth."""
        return f"postgresql://postgres@{self._subnet(name)}.1:{self.port}/postgres"

    def psql(self, sql: str) -> str:
        """Run ``sql`` on the cluster (from the root namespace); its unaligned output."""
        return sh(
            "psql", "-h", f"{self._subnet(self.names[0])}.1", "-p", self.port,
            "-U", "postgres", "-tAc", sql, "postgres",
        ).stdout  # fmt: skip

    def link(self, first: str, second: str) -> tuple[str, str]:
        """Cable hosts ``first`` and ``second`` to each other; their addresses on that link."""
        end = f"rc{self.tag}{first}{second}"
        subnet = f"{self.net}.{200 + len(self.links)}"
        self.links.append(end)
        sh("ip", "link", "add", end, "type", "veth", "peer", "name", end + "p")
        sh("ip", "link", "set", end, "netns", self.ns(first))
        sh("ip", "link", "set", end + "p", "netns", self.ns(second))
        for name, dev, addr in ((first, end, f"{subnet}.1"), (second, end + "p", f"{subnet}.2")):
            sh("ip", "-n", self.ns(name), "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", self.ns(name), "link", "set", dev, "up")
        return f"{subnet}.1", f"{subnet}.2"

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: str,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on host ``name``: in its namespace, with host name ``host-<name>``.
        ``ip netns exec``, ``unshare`` and ``sh`` each exec the next, so the returned process's
        pid is ``argv``'s own. Stopped when the block ends (SIGTERM, then SIGKILL)."""
        stderr = open(os.path.join(self.pgd, log), "w")  # noqa: SIM115 - closed by stop()
        self._logs.append(stderr)
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), "unshare", "--uts", "sh", "-c",
             f"hostname host-{name} && exec {shlex.join(argv)}"],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        """What a process spawned with ``log=name`` wrote to stderr so far."""
        with open(os.path.join(self.pgd, name)) as fh:
            return fh.read()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stderr in self._logs:
            stderr.close()


@contextlib.contextmanager
def hosts(tag: str, bindir: str, names: Sequence[str]) -> Iterator[Hosts]:
    """Namespaces ``names`` and a cluster listening on each one's veth; all removed after."""
    pgd = tempfile.mkdtemp(prefix="rc-pghosts-")
    os.chmod(pgd, 0o755)
    sh("chown", "postgres:", pgd)
    net = Hosts(tag, names, pgd)
    created: list[str] = []
    try:
        for name in names:
            ns = net.ns(name)
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "link", "add", ns, "type", "veth", "peer", "name", ns + "n")
            sh("ip", "link", "set", ns + "n", "netns", ns)
            sh("ip", "addr", "add", f"{net._subnet(name)}.1/24", "dev", ns)
            sh("ip", "link", "set", ns, "up")
            sh("ip", "-n", ns, "addr", "add", f"{net.address(name)}/24", "dev", ns + "n")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ns + "n", "up")
        sh("runuser", "-u", "postgres", "--", f"{bindir}/initdb", "-D", f"{pgd}/data", "-U",
           "postgres", "--auth=trust")  # fmt: skip
        with open(f"{pgd}/data/pg_hba.conf", "a") as hba:
            hba.write(f"host all all {net.net}.0.0/16 trust\n")
        listen = ",".join(f"{net._subnet(name)}.1" for name in names)
        sh("runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", f"{pgd}/data", "-l",
           f"{pgd}/pg.log", "-w", "-o", f"-c listen_addresses={listen} -p {net.port} -k {pgd} "
           "-c fsync=off -c max_connections=200", "start")  # fmt: skip
        yield net
    finally:
        try:
            net.stop()
        finally:
            sh("runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", f"{pgd}/data",
               "-m", "immediate", "-w", "stop", check=False)  # fmt: skip
            for ns in created:  # a namespace takes the veth ends and links inside it along
                sh("ip", "netns", "del", ns, check=False)
            for link in [*(net.ns(name) for name in names), *net.links]:
                sh("ip", "link", "del", link, check=False)
            sh("rm", "-rf", pgd, check=False)
