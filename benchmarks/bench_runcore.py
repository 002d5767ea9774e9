"""runcore side of every benchmark case; run only inside a worker subprocess (see ``worker.py``).

Each ``case_*`` function takes the case parameters and returns ``{metric: measurement}``.
Storage cases use ``runcore.storage.SqliteStorage`` directly.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import (
    QUEUE_POOL_LIMIT,
    Repeat,
    expected_output,
    fill_row,
    median_rate,
    queue_blocked_run,
    queue_free_run,
    queue_pool_names,
    queue_saturating_runs,
    queue_tag_limits,
    summary_ms,
    time_calls,
)
from _writers import run_concurrent_writers, time_sink

import runcore as rc
from runcore.storage import SqliteStorage

FILL_BATCH = 1_000


def _sqlite_instance(home: str) -> rc.Instance:
    """A SQLite-backed runcore instance on ``home``/runs.db (a context manager)."""
    return rc.Instance.from_config({"storage": {"sqlite": {"path": f"{home}/runs.db"}}})


@contextmanager
def _storage(path: str) -> Iterator[SqliteStorage]:
    """A started ``SqliteStorage`` on ``path``, closed on exit."""
    storage = SqliteStorage(path)
    storage.start()
    try:
        yield storage
    finally:
        storage.close()


def case_execute(params: dict[str, Any]) -> dict[str, Any]:
    """``job.execute_in_process()`` per call, ephemeral or on one reused SQLite instance."""
    import runcore_jobs

    shape, n_ops = params["shape"], params["n_ops"]
    job = runcore_jobs.build(shape, n_ops)
    policy = Repeat.for_mode(params["quick"])
    with tempfile.TemporaryDirectory() as home:
        if params["storage"] == "memory":
            _check(job.execute_in_process(), shape, n_ops)
            return {"time": summary_ms(time_calls(lambda: _execute(job, None), policy))}
        with _sqlite_instance(home) as instance:
            _check(job.execute_in_process(instance=instance), shape, n_ops)
            return {"time": summary_ms(time_calls(lambda: _execute(job, instance), policy))}


def _check(result: Any, shape: str, n_ops: int) -> None:
    """Fail loudly unless the job ran and produced the expected output."""
    op_name, value = expected_output(shape, n_ops)
    assert result.success and result.output_for(op_name) == value, (shape, n_ops)


def _execute(job: rc.Job, instance: rc.Instance | None) -> None:
    result = job.execute_in_process(instance=instance)
    assert result.success


def case_multiprocess(params: dict[str, Any]) -> dict[str, Any]:
    """The fan-out with ``MultiprocessExecutor(max_concurrent=2)`` on one SQLite instance."""
    import runcore_jobs

    n_ops = params["n_ops"]
    job = runcore_jobs.fanout_mp_job(n_ops)
    reps = params["reps"]
    policy = Repeat(warmup=params["warmup"], min_reps=reps, min_seconds=0.0, max_reps=reps)
    with tempfile.TemporaryDirectory() as home, _sqlite_instance(home) as instance:
        _check(job.execute_in_process(instance=instance), "fanout", n_ops)
        result = summary_ms(time_calls(lambda: _execute(job, instance), policy))
    return {"time": {**result, "n_ops": n_ops}}


def _new_run(job_name: str, status: str, tags: dict[str, str]) -> rc.Run:
    return rc.Run(
        run_id=str(uuid.uuid4()), job_name=job_name, status=rc.RunStatus[status], tags=tags
    )


def case_add_runs(params: dict[str, Any]) -> dict[str, Any]:
    """Runs created per second: ``add_run`` one by one, or ``add_runs`` in batches."""
    count, batch = params["count"], params["batch"]
    with tempfile.TemporaryDirectory() as home, _storage(f"{home}/runs.db") as storage:
        storage.add_run(_new_run("etl", "NOT_STARTED", {}))  # warm-up

        def trial() -> float:
            runs = [_new_run("etl", "NOT_STARTED", {"team": "a"}) for _ in range(count)]
            start = time.perf_counter()
            if batch:
                for first in range(0, count, batch):
                    storage.add_runs(runs[first : first + batch])
            else:
                for run in runs:
                    storage.add_run(run)
            return time.perf_counter() - start

        return {"rate": median_rate(count, trial, params["trials"])}


class RuncoreEventSink:
    """Writes LOG events for one run into a ``SqliteStorage``."""

    def __init__(self, path: str, run_id: str) -> None:
        self._storage = SqliteStorage(path)
        self._storage.start()
        self._run_id = run_id

    def _event(self, i: int) -> rc.Event:
        return rc.Event(
            run_id=self._run_id, event_type=rc.EventType.LOG, message=f"hello {i}", step_key="op_1"
        )

    def store_one(self, i: int) -> None:
        """``store_event`` of one event (one transaction)."""
        self._storage.store_event(self._event(i))

    def store_batch(self, start: int, count: int) -> None:
        """``store_events`` of ``count`` events (one transaction)."""
        self._storage.store_events([self._event(i) for i in range(start, start + count)])

    def close(self) -> None:
        """Close the storage."""
        self._storage.close()


def prepare_events_db(home: str) -> tuple[str, str]:
    """Create ``home``/runs.db with one STARTED run; return the path and the run's id."""
    path = f"{home}/runs.db"
    run = _new_run("etl", "STARTED", {})
    with _storage(path) as storage:
        storage.add_run(run)
    return path, run.run_id


def open_sink(path: str, run_id: str) -> RuncoreEventSink:
    """Entry point for writer processes (see ``_writers.py``)."""
    return RuncoreEventSink(path, run_id)


def case_store_events(params: dict[str, Any]) -> dict[str, Any]:
    """Events stored per second by a single writer, one at a time or in batches."""
    with tempfile.TemporaryDirectory() as home:
        path, run_id = prepare_events_db(home)
        sink = open_sink(path, run_id)
        try:
            sink.store_one(-1)  # warm-up
            count, batch = params["count"], params["batch"]
            result = median_rate(count, lambda: time_sink(sink, count, batch), params["trials"])
        finally:
            sink.close()
    return {"rate": result}


def case_writers(params: dict[str, Any]) -> dict[str, Any]:
    """Events per second, in total, from several writer processes on the same database file."""
    with tempfile.TemporaryDirectory() as home:
        path, run_id = prepare_events_db(home)
        return run_concurrent_writers("bench_runcore", path, run_id, params)


def _fill(storage: SqliteStorage, n_runs: int) -> None:
    """Add ``n_runs`` runs shaped by ``fill_row`` with ``add_runs``, ``FILL_BATCH`` at a time."""
    for first in range(0, n_runs, FILL_BATCH):
        storage.add_runs(
            [_new_run(*fill_row(i)) for i in range(first, min(first + FILL_BATCH, n_runs))]
        )


def case_query(params: dict[str, Any]) -> dict[str, Any]:
    """``get_run_records(RunsFilter(statuses=[SUCCESS], tags={"team": "a"}), limit=100)``."""
    runs_filter = rc.RunsFilter(statuses=[rc.RunStatus.SUCCESS], tags={"team": "a"})
    with tempfile.TemporaryDirectory() as home, _storage(str(Path(home, "runs.db"))) as storage:
        fill_start = time.perf_counter()
        _fill(storage, params["n_runs"])
        fill_seconds = time.perf_counter() - fill_start

        def once() -> None:
            records = storage.get_run_records(runs_filter, limit=100)
            assert len(records) == 100, len(records)

        result = summary_ms(time_calls(once, Repeat.for_mode(params["quick"])))
    result["fill_seconds"] = fill_seconds
    return {"time": result}


# --- queued coordination ---------------------------------------------------------------------


def _queued_instance(path: str, *, limits: bool, max_concurrent_runs: int = -1) -> rc.Instance:
    """A SQLite instance with the queued coordinator and ``RecordingLauncher`` (runs nothing).

    With ``limits`` it carries the workload's 50 tag limits and run-granularity pools.
    """
    concurrency: dict[str, Any] = {"runs": {"max_concurrent_runs": max_concurrent_runs}}
    if limits:
        concurrency["runs"]["tag_concurrency_limits"] = queue_tag_limits()
        concurrency["pools"] = {"granularity": "run"}
    return rc.Instance.from_config(
        {
            "storage": {"sqlite": {"path": path}},
            "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
            "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
            "concurrency": concurrency,
        }
    )


def _queue_jobs() -> dict[str | None, rc.Job]:
    import runcore_jobs

    return runcore_jobs.queue_jobs(queue_pool_names())


def case_enqueue(params: dict[str, Any]) -> dict[str, Any]:
    """Runs enqueued per second: ``Instance.submit_run`` under the queued coordinator."""
    count = params["count"]
    job = _queue_jobs()[None]
    with (
        tempfile.TemporaryDirectory() as home,
        _queued_instance(f"{home}/runs.db", limits=False) as inst,
    ):
        assert inst.submit_run(job).status is rc.RunStatus.QUEUED  # warm-up and check
        tags = [queue_free_run(i)[1] for i in range(count)]

        def trial() -> float:
            start = time.perf_counter()
            for run_tags in tags:
                inst.submit_run(job, tags=run_tags)
            return time.perf_counter() - start

        result = median_rate(count, trial, params["trials"])
        queued = inst.storage.count_runs(rc.RunsFilter(statuses=[rc.RunStatus.QUEUED]))
        assert queued == 1 + count * params["trials"], queued
    return {"rate": result}


def _fill_blocked_queue(path: str, n_queued: int) -> float:
    """Fill ``path`` with in-progress runs saturating every limit (launched by a dequeue
    pass), then ``n_queued`` queued runs each held by one of them; return the seconds taken."""
    jobs = _queue_jobs()
    start = time.perf_counter()
    with _queued_instance(path, limits=True) as inst:
        for pool in queue_pool_names():
            inst.set_pool_limit(pool, QUEUE_POOL_LIMIT)
        saturating = queue_saturating_runs()
        for pool, tags in saturating:
            inst.submit_run(jobs[pool], tags=tags)
        result = rc.Daemon(inst).dequeue_once()
        assert result is not None and len(result.launched) == len(saturating), result
        for i in range(n_queued):
            pool, tags = queue_blocked_run(i)
            inst.submit_run(jobs[pool], tags=tags)
    return time.perf_counter() - start


def case_dequeue_blocked(params: dict[str, Any]) -> dict[str, Any]:
    """One ``Daemon.dequeue_once()`` over a queue where every run is held.

    ``blocker="limits"``: no global limit; each queued run is held by a full tag limit,
    unique-value bucket or pool. ``blocker="global"``: the same queue with
    ``max_concurrent_runs`` equal to the in-progress runs. The daemon's instance is opened
    after the fill, as a freshly started daemon would: the first pass loads the queued runs'
    admission data into the coordinator's cache, later passes reuse it.
    """
    n_queued = params["n_queued"]
    n_active = len(queue_saturating_runs())
    max_runs = n_active if params["blocker"] == "global" else -1
    with tempfile.TemporaryDirectory() as home:
        path = f"{home}/runs.db"
        fill_seconds = _fill_blocked_queue(path, n_queued)
        with _queued_instance(path, limits=True, max_concurrent_runs=max_runs) as inst:
            daemon = rc.Daemon(inst)

            def once() -> None:
                result = daemon.dequeue_once()
                assert result is not None and not result.launched, result
                assert result.queued == n_queued, result

            start = time.perf_counter()
            once()
            first = time.perf_counter() - start
            steady = summary_ms(time_calls(once, Repeat.for_mode(params["quick"])))
            if params["blocker"] == "limits":
                _check_only_limits_hold(inst, daemon)
    steady.update(count=n_queued, fill_seconds=fill_seconds)
    first_ms = {"value": first * 1000.0, "unit": "ms", "reps": 1, "count": n_queued}
    return {"first": first_ms, "steady": steady}


def _check_only_limits_hold(inst: rc.Instance, daemon: rc.Daemon) -> None:
    """A run no limit covers starts at once: the queued runs are held by their limits."""
    free = inst.submit_run(_queue_jobs()[None], tags=queue_free_run(0)[1])
    result = daemon.dequeue_once()
    assert result is not None and result.launched == (free.run_id,), result


def case_drain(params: dict[str, Any]) -> dict[str, Any]:
    """Runs launched per second: ``dequeue_once()`` until ``n_queued`` free runs are started.

    No limits, ``RecordingLauncher`` (launches nothing: started runs stay STARTING). Median
    of ``trials`` fills and drains; each drain runs on a freshly opened instance.
    """
    n_queued = params["n_queued"]
    job = _queue_jobs()[None]
    passes: list[int] = []

    def trial() -> float:
        with tempfile.TemporaryDirectory() as home:
            path = f"{home}/runs.db"
            with _queued_instance(path, limits=False) as inst:
                for i in range(n_queued):
                    inst.submit_run(job, tags=queue_free_run(i)[1])
            with _queued_instance(path, limits=False) as inst:
                inst.ensure_started()
                daemon = rc.Daemon(inst)
                launched = count = 0
                start = time.perf_counter()
                while launched < n_queued:
                    result = daemon.dequeue_once()
                    assert result is not None and (result.launched or result.queued), result
                    launched += len(result.launched)
                    count += 1
                elapsed = time.perf_counter() - start
                left = inst.storage.count_runs(rc.RunsFilter(statuses=[rc.RunStatus.QUEUED]))
                assert launched == n_queued and left == 0, (launched, left)
        passes.append(count)
        return elapsed

    result = median_rate(n_queued, trial, params["trials"])
    result["calls"] = max(passes)  # dequeue passes per drain
    return {"rate": result}


CASES = {
    "execute": case_execute,
    "multiprocess": case_multiprocess,
    "add_runs": case_add_runs,
    "store_events": case_store_events,
    "writers": case_writers,
    "query": case_query,
    "enqueue": case_enqueue,
    "dequeue_blocked": case_dequeue_blocked,
    "drain": case_drain,
}
