"""Dagster side of every benchmark case; run only inside a worker subprocess (see ``worker.py``).

Each ``case_*`` function takes the case parameters and returns ``{metric: measurement}``.
Storage cases go through ``DagsterInstance`` (``add_run``, ``store_event``,
``get_run_records``), the way a Dagster user or Dagster itself writes; the only exception is the
untimed bulk fill before the query benchmark, which inserts into Dagster's own run tables in
large transactions because ``add_run`` alone would take minutes to write 10,000 runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import Repeat, expected_output, fill_row, median_rate, summary_ms, time_calls
from _writers import run_concurrent_writers, time_sink

BENCH_DIR = str(Path(__file__).resolve().parent)


def _instance(home: str) -> Any:
    """A persistent, SQLite-backed Dagster instance rooted at ``home`` (default storage)."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = home
    Path(home, "dagster.yaml").touch()  # an empty config: defaults, without the warning
    return DagsterInstance.local_temp(tempdir=home)


def case_execute(params: dict[str, Any]) -> dict[str, Any]:
    """``job.execute_in_process()`` per call, ephemeral or on one reused SQLite instance."""
    import dagster_jobs

    shape, n_ops = params["shape"], params["n_ops"]
    job = dagster_jobs.build(shape, n_ops)
    policy = Repeat.for_mode(params["quick"])
    with tempfile.TemporaryDirectory() as home:
        instance = _instance(home) if params["storage"] == "sqlite" else None
        _check(job.execute_in_process(instance=instance), shape, n_ops)

        def once() -> None:
            result = job.execute_in_process(instance=instance)
            assert result.success

        return {"time": summary_ms(time_calls(once, policy))}


def _check(result: Any, shape: str, n_ops: int) -> None:
    """Fail loudly unless the job ran and produced the expected output."""
    op_name, value = expected_output(shape, n_ops)
    assert result.success and result.output_for_node(op_name) == value, (shape, n_ops)


def case_multiprocess(params: dict[str, Any]) -> dict[str, Any]:
    """One ``execute_job`` of the fan-out with ``multiprocess_executor(max_concurrent=2)``.

    A single cold execution: at ~1 s per step, warm-up effects are lost in the noise.
    """
    from dagster import build_reconstructable_job, execute_job

    n_ops = params["n_ops"]
    recon = build_reconstructable_job(
        "dagster_jobs", "fanout_mp_job", (n_ops,), reconstructor_working_directory=BENCH_DIR
    )
    with tempfile.TemporaryDirectory() as home:
        instance = _instance(home)
        start = time.perf_counter()
        result = execute_job(recon, instance=instance)
        elapsed = time.perf_counter() - start
        assert result.success
        instance.dispose()
    return {"time": {"value": elapsed * 1000.0, "unit": "ms", "reps": 1, "n_ops": n_ops}}


def _new_run(run_id: str, job_name: str, status: str, tags: dict[str, str]) -> Any:
    from dagster import DagsterRun, DagsterRunStatus

    return DagsterRun(job_name=job_name, run_id=run_id, status=DagsterRunStatus[status], tags=tags)


def case_add_runs(params: dict[str, Any]) -> dict[str, Any]:
    """Runs created per second with ``instance.add_run``, one call per run."""
    count = params["count"]
    with tempfile.TemporaryDirectory() as home:
        instance = _instance(home)
        instance.add_run(_new_run(str(uuid.uuid4()), "etl", "NOT_STARTED", {}))  # warm-up

        def trial() -> float:
            runs = [
                _new_run(str(uuid.uuid4()), "etl", "NOT_STARTED", {"team": "a"})
                for _ in range(count)
            ]
            start = time.perf_counter()
            for run in runs:
                instance.add_run(run)
            return time.perf_counter() - start

        result = median_rate(count, trial, params["trials"])
        instance.dispose()
    return {"rate": result}


class DagsterEventSink:
    """Writes LOG-style ``EventLogEntry`` rows for one run through a Dagster instance."""

    def __init__(self, home: str, run_id: str) -> None:
        self._instance = _instance(home)
        self._run_id = run_id

    def _entry(self, i: int) -> Any:
        from dagster import EventLogEntry

        return EventLogEntry(  # type: ignore[no-untyped-call]
            error_info=None,
            level=logging.INFO,
            user_message=f"hello {i}",
            run_id=self._run_id,
            timestamp=time.time(),
            step_key="op_1",
            job_name="etl",
            dagster_event=None,
        )

    def store_one(self, i: int) -> None:
        """``instance.store_event`` of one event (one transaction)."""
        self._instance.store_event(self._entry(i))

    def store_batch(self, start: int, count: int) -> None:
        """``event_log_storage.store_event_batch`` (SQLite storage stores them one by one)."""
        entries = [self._entry(i) for i in range(start, start + count)]
        self._instance.event_log_storage.store_event_batch(entries)

    def close(self) -> None:
        """Dispose of the instance."""
        self._instance.dispose()


def prepare_events_home(home: str) -> str:
    """Create the instance at ``home`` and one STARTED run; return the run's id."""
    run_id = str(uuid.uuid4())
    instance = _instance(home)
    instance.add_run(_new_run(run_id, "etl", "STARTED", {}))
    DagsterEventSink(home, run_id).store_one(-1)  # creates the run's event shard
    instance.dispose()
    return run_id


def open_sink(home: str, run_id: str) -> DagsterEventSink:
    """Entry point for writer processes (see ``_writers.py``)."""
    return DagsterEventSink(home, run_id)


def case_store_events(params: dict[str, Any]) -> dict[str, Any]:
    """Events stored per second by a single writer, one at a time or in batches."""
    with tempfile.TemporaryDirectory() as home:
        run_id = prepare_events_home(home)
        sink = open_sink(home, run_id)
        try:
            sink.store_one(-1)  # warm-up: opens the run's event shard in this instance
            count, batch = params["count"], params["batch"]
            result = median_rate(count, lambda: time_sink(sink, count, batch), params["trials"])
        finally:
            sink.close()
    return {"rate": result}


def case_writers(params: dict[str, Any]) -> dict[str, Any]:
    """Events per second, in total, from several writer processes on the same run (one file)."""
    with tempfile.TemporaryDirectory() as home:
        run_id = prepare_events_home(home)
        return run_concurrent_writers("bench_dagster", home, run_id, params)


def _bulk_fill(instance: Any, n_runs: int, chunk: int = 5000) -> None:
    """Insert ``n_runs`` runs into Dagster's own run tables, ``chunk`` runs per transaction.

    Uses Dagster's run-row builder (``_get_run_insertion_values``) so every row is exactly what
    ``add_run`` would write; only the per-run transaction is skipped.
    """
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable

    storage = instance.run_storage
    base = datetime.now(UTC)
    for first in range(0, n_runs, chunk):
        rows: list[dict[str, Any]] = []
        tags: list[dict[str, str]] = []
        for i in range(first, min(first + chunk, n_runs)):
            job_name, status, run_tags = fill_row(i)
            run = _new_run(str(uuid.uuid4()), job_name, status, run_tags)
            rows.append(storage._get_run_insertion_values(run, base))
            tags.extend({"run_id": run.run_id, "key": k, "value": v} for k, v in run_tags.items())
        with storage.connect() as conn:
            conn.execute(RunsTable.insert(), rows)
            conn.execute(RunTagsTable.insert(), tags)


def case_query(params: dict[str, Any]) -> dict[str, Any]:
    """``get_run_records(RunsFilter(statuses=[SUCCESS], tags={"team": "a"}), limit=100)``."""
    from dagster import DagsterRunStatus, RunsFilter

    with tempfile.TemporaryDirectory() as home:
        instance = _instance(home)
        fill_start = time.perf_counter()
        _bulk_fill(instance, params["n_runs"])
        fill_seconds = time.perf_counter() - fill_start
        runs_filter = RunsFilter(statuses=[DagsterRunStatus.SUCCESS], tags={"team": "a"})

        def once() -> None:
            records = instance.get_run_records(runs_filter, limit=100)
            assert len(records) == 100, len(records)

        result = summary_ms(time_calls(once, Repeat.for_mode(params["quick"])))
        result["fill_seconds"] = fill_seconds
        instance.dispose()
    return {"time": result}


CASES = {
    "execute": case_execute,
    "multiprocess": case_multiprocess,
    "add_runs": case_add_runs,
    "store_events": case_store_events,
    "writers": case_writers,
    "query": case_query,
}
