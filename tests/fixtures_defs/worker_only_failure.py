"""Imports fine in the test process, fails in a spawned worker process.

Lets a test check that a worker that cannot load the job fails the run with the worker's error.
"""

from __future__ import annotations

import multiprocessing

import runcore as rc

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this module refuses to load in a worker process")


@rc.op
def only() -> int:
    return 1


defs = rc.Definitions(jobs=[rc.job("fragile", [only])])
