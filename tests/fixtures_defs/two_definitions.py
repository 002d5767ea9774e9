"""Two ``Definitions`` in one module: a location must name one."""

from __future__ import annotations

import runcore as rc


@rc.op
def a() -> int:
    return 1


first = rc.Definitions(jobs=[rc.job("first", [a])])
second = rc.Definitions(jobs=[rc.job("second", [a])])
not_defs = 42
