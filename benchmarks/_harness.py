"""Helpers shared by the benchmark workers: repetition policy, timing and the shared data shapes.

Nothing here imports runcore or Dagster, so the parent process (``run.py``) and both kinds of
worker can import it without paying for either library.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def p99(samples: list[float]) -> float:
    """The 99th percentile of ``samples``, interpolated between the two nearest ranks
    (``statistics.quantiles(..., method="inclusive")``: of 50 samples, it lies between the
    49th and the 50th smallest)."""
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def latency_ms(samples: list[float]) -> dict[str, dict[str, Any]]:
    """``median`` and ``p99`` measurements of latencies (seconds), in milliseconds; each
    carries the other, the spread and the count for the details table."""
    median = statistics.median(samples) * 1000.0
    spread = {
        "median": median,
        "p99": p99(samples) * 1000.0,
        "min": min(samples) * 1000.0,
        "max": max(samples) * 1000.0,
        "reps": len(samples),
    }
    return {
        "median": {**spread, "value": median, "unit": "ms"},
        "p99": {**spread, "value": spread["p99"], "unit": "ms"},
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


# --- the queued-coordination workload (identical for runcore and Dagster) -------------------

#: Tag limits: ``QUEUE_KEY_LIMITS`` on a key alone (any value), ``QUEUE_VALUE_LIMITS`` on
#: key=value, ``QUEUE_UNIQUE_LIMITS`` per unique value of a key; 50 in all.
QUEUE_KEY_LIMITS = 20
QUEUE_VALUE_LIMITS = 20
QUEUE_UNIQUE_LIMITS = 10
#: Values each per-unique-value key takes.
QUEUE_UNIQUE_VALUES = 5
#: Pools (one op each in its own job), granularity ``run``.
QUEUE_POOLS = 20
#: How many in-progress runs each tag limit, unique-value bucket and pool allows.
QUEUE_TAG_LIMIT = 2
QUEUE_UNIQUE_LIMIT = 1
QUEUE_POOL_LIMIT = 2


def queue_tag_limits() -> list[dict[str, Any]]:
    """The 50 tag limits, in the config shape both libraries read (``dagster.yaml`` style)."""
    limits: list[dict[str, Any]] = []
    limits += [{"key": f"qkey{i}", "limit": QUEUE_TAG_LIMIT} for i in range(QUEUE_KEY_LIMITS)]
    limits += [
        {"key": f"qval{i}", "value": "hot", "limit": QUEUE_TAG_LIMIT}
        for i in range(QUEUE_VALUE_LIMITS)
    ]
    limits += [
        {
            "key": f"quniq{i}",
            "value": {"applyLimitPerUniqueValue": True},
            "limit": QUEUE_UNIQUE_LIMIT,
        }
        for i in range(QUEUE_UNIQUE_LIMITS)
    ]
    return limits


def queue_pool_names() -> list[str]:
    """The pools, ``qpool0 ...``; a run of job ``pooled_<pool>`` uses that pool."""
    return [f"qpool{i}" for i in range(QUEUE_POOLS)]


#: A queued or in-progress run of the workload: (pool its job uses or None, its tags).
QueueRun = tuple[str | None, dict[str, str]]


def queue_saturating_runs() -> list[QueueRun]:
    """In-progress runs that fill every tag limit, every unique-value bucket and every pool.

    170 runs: 2 per key-only limit, 2 per key=value limit, 1 per (unique-value key, value)
    and 2 per pool.
    """
    runs: list[QueueRun] = []
    for i in range(QUEUE_KEY_LIMITS):
        runs += [(None, {f"qkey{i}": f"x{n}"}) for n in range(QUEUE_TAG_LIMIT)]
    for i in range(QUEUE_VALUE_LIMITS):
        runs += [(None, {f"qval{i}": "hot"}) for _ in range(QUEUE_TAG_LIMIT)]
    for i in range(QUEUE_UNIQUE_LIMITS):
        runs += [(None, {f"quniq{i}": f"u{v}"}) for v in range(QUEUE_UNIQUE_VALUES)]
    for pool in queue_pool_names():
        runs += [(pool, {}) for _ in range(QUEUE_POOL_LIMIT)]
    return runs


def queue_blocked_run(i: int) -> QueueRun:
    """The ``i``-th queued run: held by a full key-only limit, key=value limit,
    unique-value bucket or pool (cycling), and carrying free-form tags besides, one of which
    names a limited key with a value its limit does not cover."""
    tags = {
        "team": FILL_TEAMS[i % len(FILL_TEAMS)],
        "env": "prod" if i % 2 else "dev",
        f"qval{(i + 1) % QUEUE_VALUE_LIMITS}": "cold",
    }
    kind = i % 4
    if kind == 0:
        return None, {**tags, f"qkey{i % QUEUE_KEY_LIMITS}": f"y{i % 7}"}
    if kind == 1:
        return None, {**tags, f"qval{i % QUEUE_VALUE_LIMITS}": "hot"}
    if kind == 2:
        unique = f"u{i % QUEUE_UNIQUE_VALUES}"
        return None, {**tags, f"quniq{i % QUEUE_UNIQUE_LIMITS}": unique}
    return queue_pool_names()[i % QUEUE_POOLS], tags


def queue_free_run(i: int) -> QueueRun:
    """The ``i``-th run of the drain workload: free-form tags only, nothing limits it."""
    return None, {"team": FILL_TEAMS[i % len(FILL_TEAMS)], "env": "prod" if i % 2 else "dev"}


# --- PostgreSQL: the server of the ``..., PostgreSQL`` rows ---------------------------------

#: Where the PostgreSQL rows run: ``$RUNCORE_BENCH_POSTGRES_URL``, else the tests' server
#: (``$RUNCORE_TEST_POSTGRES_URL``), else the local one. runcore's measurements each get a fresh
#: schema on it, Dagster's a fresh database; both are dropped afterwards.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url(database: str | None = None) -> str:
    """The benchmark server's URL, or the same server's ``database``."""
    from urllib.parse import urlsplit, urlunsplit

    url = os.environ.get("RUNCORE_BENCH_POSTGRES_URL") or os.environ.get(
        "RUNCORE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL
    )
    return url if database is None else urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def postgres_execute(sql: str, params: tuple[Any, ...] = (), url: str | None = None) -> list[Any]:
    """Run one statement on the benchmark server (autocommit; on ``url``, a database of it,
    if given); its rows, if any."""
    import psycopg

    with psycopg.connect(url or postgres_url(), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def postgres_settle(tables: str = "", url: str | None = None) -> None:
    """After a bulk fill, untimed: ``VACUUM ANALYZE`` (what autovacuum does soon after so many
    inserts: the planner's statistics, and the visibility map that lets index-only scans skip
    the heap) and a ``CHECKPOINT`` (the fill's dirty pages written back). Timed calls then meet
    a settled server, as they would minutes into production, not its catch-up on the fill,
    which on two cores competes with the client for CPU. ``tables``: all of the database's,
    if empty."""
    postgres_execute(f"VACUUM ANALYZE {tables}".rstrip(), url=url)
    postgres_execute("CHECKPOINT", url=url)


def _fresh_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The name of a new schema on the benchmark server (created by its first user), dropped
    with everything in it on exit."""
    schema = _fresh_name("rcbench")
    try:
        yield schema
    finally:
        postgres_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on the benchmark server, dropped on exit (its
    connections closed by force)."""
    name = _fresh_name("dgbench")
    postgres_execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        postgres_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_server() -> dict[str, str]:
    """The server's version and the settings single-commit rates depend on."""
    rows = postgres_execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'fsync', "
        "'synchronous_commit', 'wal_sync_method', 'shared_buffers', 'commit_delay')"
    )
    return {str(name): str(value) for name, value in rows}
