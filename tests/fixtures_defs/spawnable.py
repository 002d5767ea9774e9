"""A job at module level, never loaded through ``load_code_location``.

A spawned worker finds it by the location inferred from where the module holds it.
"""

from __future__ import annotations

import os

import runcore as rc


@rc.op
def first_pid() -> int:
    return os.getpid()


@rc.op
def second_pid(first_pid: int) -> list[int]:
    return [first_pid, os.getpid()]


spawn_pids = rc.job("spawn_pids", [first_pid, second_pid])
