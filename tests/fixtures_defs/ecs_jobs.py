"""Jobs the ECS end-to-end tests run as tasks: a quick one, and one that waits for a gate.

``gated`` blocks in its second step until the file named by ``$ECS_TEST_GATE`` exists (at most
60 s), so a test can kill or cancel its task mid-run and then let a retry through.
"""

from __future__ import annotations

import os
import time

import runcore as rc


@rc.op
def extract() -> list[int]:
    return [1, 2, 3]


@rc.op
def total(extract: list[int]) -> int:
    return sum(extract)


@rc.op
def gated_total(extract: list[int]) -> int:
    gate = os.environ.get("ECS_TEST_GATE", "")
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sum(extract) * 10


quick = rc.job("quick", [extract, total])
gated = rc.job("gated", [extract, gated_total])
defs = rc.Definitions(jobs=[quick, gated])
