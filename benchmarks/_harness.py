"""Helpers shared by the benchmark workers: repetition policy, timing and the shared data shapes.

Nothing here imports runcore or Dagster, so the parent process (``run.py``) and both kinds of
worker can import it without paying for either library.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Statuses the query benchmarks cycle through when they fill the run table (names shared by
#: runcore's ``RunStatus`` and Dagster's ``DagsterRunStatus``).
FILL_STATUSES = ("SUCCESS", "FAILURE", "STARTED", "CANCELED")
#: Values of the ``team`` tag the query benchmarks cycle through.
FILL_TEAMS = ("a", "b", "c", "d", "e")
#: Number of distinct job names in the filled run table.
FILL_JOBS = 10


def fill_row(i: int) -> tuple[str, str, dict[str, str]]:
    """The job name, status name and tags of the ``i``-th run of a filled table.

    Statuses cycle with period 4 and teams with period 5, so one (status, team) pair matches
    1/20 of the runs: 500 of 10,000, enough for a ``limit=100`` query to fill its page.
    """
    tags = {"team": FILL_TEAMS[i % len(FILL_TEAMS)], "env": "prod" if i % 2 else "dev"}
    return f"job_{i % FILL_JOBS}", FILL_STATUSES[i % len(FILL_STATUSES)], tags


def expected_output(shape: str, n_ops: int) -> tuple[str, int]:
    """An op of the job shape and the value it must output, to check a job really ran."""
    if shape == "single":
        return "op_0", 1
    if shape == "chain":
        return f"op_{n_ops - 1}", n_ops
    return f"leaf_{n_ops - 1}", 2


@dataclass(frozen=True)
class Repeat:
    """How often to repeat a timed call: warm-ups, then at least ``min_reps`` timed calls and
    at least ``min_seconds`` of timed calls, stopping at ``max_reps``."""

    warmup: int
    min_reps: int
    min_seconds: float
    max_reps: int

    @classmethod
    def for_mode(cls, quick: bool) -> Repeat:
        """The policy for a normal or a ``--quick`` (smoke test) run."""
        if quick:
            return cls(warmup=1, min_reps=3, min_seconds=0.0, max_reps=20)
        return cls(warmup=2, min_reps=7, min_seconds=1.0, max_reps=1000)


def time_calls(fn: Callable[[], Any], policy: Repeat) -> list[float]:
    """Call ``fn`` per ``policy`` and return the wall time of each timed call, in seconds."""
    for _ in range(policy.warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < policy.max_reps and (
        len(samples) < policy.min_reps or spent < policy.min_seconds
    ):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
    return samples


def summary_ms(samples: list[float]) -> dict[str, Any]:
    """The median of ``samples`` (seconds) in milliseconds, with the spread and count."""
    return {
        "value": statistics.median(samples) * 1000.0,
        "unit": "ms",
        "min": min(samples) * 1000.0,
        "max": max(samples) * 1000.0,
        "reps": len(samples),
    }


def rate(count: int, seconds: float) -> dict[str, Any]:
    """``count`` operations in ``seconds`` as a rate per second."""
    return {"value": count / seconds, "unit": "/s", "count": count, "seconds": seconds}


def median_rate(count: int, trial: Callable[[], float], trials: int) -> dict[str, Any]:
    """Run ``trial`` (``count`` operations, returns seconds) ``trials`` times; median rate.

    Several trials keep one disturbed trial (another process hogging the disk or a core) from
    deciding the figure.
    """
    rates = sorted(count / trial() for _ in range(trials))
    return {
        "value": statistics.median(rates),
        "unit": "/s",
        "count": count,
        "trials": trials,
        "min": rates[0],
        "max": rates[-1],
    }
