"""The chaos script (``benchmarks/chaos.py --quick``): random kill -9 of run workers and of
daemons on SQLite loses no run, leaks no slot, starts no run twice, misses or doubles no retry,
and fails a killed worker's run within two monitoring poll intervals."""

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
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    assert text.startswith("# runcore chaos report\n\n**PASS**")
    for name in INVARIANTS:
        row = re.search(rf"^\| {name} \| (\d+) \| 0 \|$", text, re.MULTILINE)
        assert row is not None, f"no row {name!r} in the report:\n{text}"
        assert row.group(1) == "0", f"{name}: {row.group(1)}\n{text}"
    p99 = re.search(r"^\| death -> FAILURE p99 \| (\d+) ms \| < (\d+) ms \|$", text, re.MULTILINE)
    assert p99 is not None, text
    assert int(p99.group(1)) < int(p99.group(2))
    killed = re.search(r"^\| worker processes killed \| (\d+) \|$", text, re.MULTILINE)
    assert killed is not None and int(killed.group(1)) > 0
