"""Event-writing loops shared by the runcore and Dagster storage benchmarks.

An *event sink* (``bench_runcore.open_sink`` / ``bench_dagster.open_sink``) writes LOG events
for one run, one at a time (``store_one``: one transaction each) or in batches
(``store_batch``: one call per batch). The concurrent benchmark starts several writer processes
with the ``spawn`` method, lets each open its own sink, then releases them together through a
barrier and measures from the first writer's start to the last writer's end. :func:`race` is
that start-together machinery for any kind of racing process (the two daemons of the
admission benchmark use it too).
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue as queue_mod
import time
from typing import Any, Protocol

from _harness import median_rate

LOCKED = "database is locked"
#: Seconds a writer waits for the others to be ready, and the parent for all of them to finish.
BARRIER_TIMEOUT = 120.0
FINISH_TIMEOUT = 600.0


class EventSink(Protocol):
    """What a writer needs from a storage under test."""

    def store_one(self, i: int) -> None: ...
    def store_batch(self, start: int, count: int) -> None: ...
    def close(self) -> None: ...


def _is_locked_error(exc: BaseException) -> bool:
    """True if ``exc`` or anything it was raised from says the SQLite database was locked."""
    seen: BaseException | None = exc
    while seen is not None:
        if LOCKED in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_events(sink: EventSink, count: int, batch: int) -> int:
    """Write ``count`` events (``batch`` per call, or one by one if 0); return locked errors.

    A call that fails with "database is locked" is counted and not retried, so the figure
    shows what a caller of the storage would see.
    """
    errors = 0
    step = batch or 1
    for start in range(0, count, step):
        try:
            if batch:
                sink.store_batch(start, min(batch, count - start))
            else:
                sink.store_one(start)
        except Exception as exc:
            if not _is_locked_error(exc):
                raise
            errors += 1
    return errors


def time_sink(sink: EventSink, count: int, batch: int) -> float:
    """Seconds taken to write ``count`` events into ``sink`` (locked errors re-raised)."""
    start = time.perf_counter()
    errors = write_events(sink, count, batch)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{errors} 'database is locked' errors from a single writer")
    return elapsed


class Racer(Protocol):
    """One process of a race: opened before the start, then ``run`` once, then closed."""

    def run(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class _Writer:
    """A racer writing ``count`` events into a sink, ``batch`` per call."""

    def __init__(self, job: dict[str, Any]) -> None:
        module = importlib.import_module(job["module"])
        self.sink: EventSink = module.open_sink(job["target"], job["run_id"])
        self.count, self.batch = job["count"], job["batch"]

    def run(self) -> dict[str, Any]:
        return {"errors": write_events(self.sink, self.count, self.batch)}

    def close(self) -> None:
        self.sink.close()


def open_writer(job: dict[str, Any]) -> Racer:
    """The racer of the concurrent event writers (see :func:`run_concurrent_writers`)."""
    return _Writer(job)


def _racer_main(job: dict[str, Any], barrier: Any, queue: Any) -> None:
    """Body of one racing process: open its racer (``job["opener"]``, ``module:function``),
    wait for the others, run, report its start, end and what ``run`` returned."""
    module, _, name = job["opener"].partition(":")
    racer: Racer = getattr(importlib.import_module(module), name)(job)
    try:
        barrier.wait(timeout=BARRIER_TIMEOUT)
        start = time.monotonic()
        report = racer.run()
        end = time.monotonic()
    finally:
        racer.close()
    queue.put({**report, "start": start, "end": end})


def _collect(queue: Any, procs: list[Any]) -> list[dict[str, Any]]:
    """One report per process; raises if one dies or they take too long."""
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + FINISH_TIMEOUT
    while len(reports) < len(procs):
        try:
            reports.append(queue.get(timeout=1.0))
        except queue_mod.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"racing processes failed with exit codes {failed}") from None
            if time.monotonic() > deadline:
                raise TimeoutError("racing processes did not finish in time") from None
    return reports


def race(job: dict[str, Any], n_procs: int) -> tuple[float, list[dict[str, Any]]]:
    """Start ``n_procs`` processes (``spawn``) that each open ``job["opener"](job)``, release
    them together through a barrier; the seconds from the first start to the last end, and
    each process's report."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_racer_main, args=(job, barrier, queue)) for _ in range(n_procs)]
    for proc in procs:
        proc.start()
    try:
        reports = _collect(queue, procs)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    return seconds, reports


def run_concurrent_writers(
    module: str, target: Any, run_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Run ``params["writers"]`` writer processes of ``module``'s sink on the same run
    (``target``: where the sink's storage is, passed to ``module.open_sink``).

    Each of ``params["trials"]`` trials starts fresh writers. Returns the median over trials of
    the total events/s (from the first writer's start to the last one's end), and the number
    of "database is locked" errors the writers saw in all trials together.
    """
    n_writers, count, batch = params["writers"], params["count"], params["batch"]
    job = {
        "opener": f"{__name__}:open_writer",
        "module": module,
        "target": target,
        "run_id": run_id,
        "count": count,
        "batch": batch,
    }
    errors = 0

    def trial() -> float:
        nonlocal errors
        seconds, reports = race(job, n_writers)
        errors += sum(r["errors"] for r in reports)
        return seconds

    total_rate = median_rate(n_writers * count, trial, params["trials"])
    calls = -(-count // batch) if batch else count  # store calls per writer and trial
    return {
        "rate": total_rate,
        "locked_errors": {
            "value": errors,
            "unit": "errors",
            "calls": n_writers * calls * params["trials"],
        },
    }
