"""The chaos script (``benchmarks/chaos.py --quick``): random kill -9 of run workers and of
daemons (and daemons dying mid-launch) loses no run, leaks no slot, starts no run twice,
exceeds no limit (read from the event log), misses or doubles no retry, and fails every
killed worker's run: on SQLite, and on PostgreSQL with the server restarted in the middle (a
cluster of the script's own, ``initdb``/``pg_ctl`` on a free port; never the shared server).

The script sends signals, so each run is pid 1 of a child pid namespace (``unshare --pid
--fork --mount-proc``): nothing outside it can be reached, and nothing it started outlives it.
Without ``unshare`` (or, for PostgreSQL, the server binaries) the tests are skipped, except on
CI (``CI=true``), where a skip would hide them: there they fail.

How fast a killed worker's run fails (p99 under two poll intervals) is a benchmark figure,
reported in ``benchmarks/CHAOS.md`` and ``benchmarks/CHAOS-postgres.md`` by the full runs;
here it is only checked to be reported, since a timed assertion depends on the machine's load,
not on the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "benchmarks" / "chaos.py"
INVARIANTS = (
    "runs lost",
    "slots leaked",
    "double starts",
    "limits exceeded",
    "missed retries",
    "duplicate retries",
    "unwanted retries",
    "killed runs not failed",
    "submit errors",
    "chaos thread errors",
)


def _require(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the chaos run cannot run on CI: {problem}")
    pytest.skip(problem)


def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare (util-linux): the chaos run needs a pid namespace of its own"
    if os.geteuid() != 0:
        return "not root: unshare --pid --mount-proc needs it"
    return None


def _run_chaos(tmp_path: Path, *args: str, timeout: float) -> str:
    """Run the chaos script as pid 1 of a new pid namespace; the report's text."""
    report = tmp_path / "CHAOS.md"
    done = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            str(CHAOS),
            "--quick",
            "--out",
            str(report),
            *args,
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    text = report.read_text() if report.exists() else ""
    assert text.startswith("# runcore chaos report\n\n**"), done.stdout + done.stderr
    for name in INVARIANTS:
        row = re.search(rf"^\| {name} \| (\d+) \| 0 \|$", text, re.MULTILINE)
        assert row is not None, f"no row {name!r} in the report:\n{text}"
        assert row.group(1) == "0", f"{name}: {row.group(1)}\n{text}"
    p99 = re.search(r"^\| death -> FAILURE p99 \| (\d+) ms \| < (\d+) ms \|$", text, re.MULTILINE)
    assert p99 is not None, text
    killed = re.search(r"^\| worker processes killed \| (\d+) \|$", text, re.MULTILINE)
    assert killed is not None and int(killed.group(1)) > 0
    return text


@pytest.mark.slow
def test_quick_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    _require(_namespace_problem())
    text = _run_chaos(tmp_path, timeout=240)
    assert "on SQLite" in text


@pytest.mark.slow
def test_quick_chaos_run_on_postgres_rides_through_a_server_restart(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _pgcluster
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    _require(_namespace_problem() or _pgcluster.missing())
    text = _run_chaos(tmp_path, "--storage", "postgres", "--outage", "3", timeout=240)
    restart = re.search(r"whose server was restarted once in the middle \(([\d.]+) s", text)
    assert restart is not None, text
    assert float(restart.group(1)) >= 3.0, "the server was down for the outage asked for"
