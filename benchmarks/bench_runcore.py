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

from _harness import Repeat, expected_output, fill_row, median_rate, summary_ms, time_calls
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


CASES = {
    "execute": case_execute,
    "multiprocess": case_multiprocess,
    "add_runs": case_add_runs,
    "store_events": case_store_events,
    "writers": case_writers,
    "query": case_query,
}
