"""The chaos script (``benchmarks/chaos.py --quick``): random kill -9 of run workers and of
daemons on SQLite (and daemons dying mid-launch) loses no run, leaks no slot, starts no run
twice, misses or doubles no retry, and fails every killed worker's run.

How fast a killed worker's run fails (p99 under two poll intervals) is a benchmark figure,
reported in ``benchmarks/CHAOS.md`` by the full run; here it is only checked to be reported,
since a timed assertion depends on the machine's load, not on the code."""

from __future__ import annotations

import re
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
    "missed retries",
    "duplicate retries",
    "unwanted retries",
    "killed runs not failed",
    "submit errors",
    "chaos thread errors",
)


@pytest.mark.slow
def test_quick_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "CHAOS.md"
    done = subprocess.run(
        [sys.executable, str(CHAOS), "--quick", "--out", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
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
