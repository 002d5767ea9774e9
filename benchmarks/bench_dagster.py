"""Dagster side of every benchmark case; run only inside a worker subprocess (see ``worker.py``).

Each ``case_*`` function takes the case parameters and returns ``{metric: measurement}``.
Storage cases go through ``DagsterInstance`` (``add_run``, ``store_event``,
``get_run_records``), the way a Dagster user or Dagster itself writes; the only exception is the
untimed bulk fill before the query benchmark, which inserts into Dagster's own run tables in
large transactions because ``add_run`` alone would take minutes to write 10,000 runs.

With ``backend="postgres"`` the instance's ``dagster.yaml`` puts every storage on
dagster-postgres (``storage: postgres: postgres_url``), in a fresh database of the benchmark
server, dropped afterwards; otherwise Dagster's default SQLite storages in a temp dir.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _harness import (
    QUEUE_POOL_LIMIT,
    Repeat,
    expected_output,
    fill_row,
    latency_ms,
    median_rate,
    postgres_database,
    postgres_settle,
    queue_blocked_run,
    queue_free_run,
    queue_pool_names,
    queue_saturating_runs,
    queue_tag_limits,
    summary_ms,
    time_calls,
)
from _writers import run_concurrent_writers, time_sink

BENCH_DIR = str(Path(__file__).resolve().parent)


def _instance(home: str) -> Any:
    """A persistent Dagster instance rooted at ``home``: its ``dagster.yaml`` (written by
    :func:`_home`, :func:`_queued_instance`), or an empty one: the default SQLite storages."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = home
    Path(home, "dagster.yaml").touch()  # an empty config: defaults, without the warning
    return DagsterInstance.local_temp(tempdir=home)


def _write_config(home: str, config: dict[str, Any]) -> None:
    """Write ``home``/dagster.yaml: ``config`` plus the storage section already there."""
    path = Path(home, "dagster.yaml")
    text = path.read_text() if path.exists() else ""
    storage = {"storage": json.loads(text)["storage"]} if "storage" in text else {}
    path.write_text(json.dumps({**config, **storage}))  # JSON is YAML


def _settle(home: str) -> None:
    """On PostgreSQL, settle the instance's database after a bulk fill (untimed), as the
    runcore side does: see ``_harness.postgres_settle``."""
    config = json.loads(Path(home, "dagster.yaml").read_text() or "{}")
    if "storage" in config:
        url = config["storage"]["postgres"]["postgres_url"]
        postgres_settle(url=url.replace("+psycopg2", "", 1))


@contextmanager
def _home(params: dict[str, Any]) -> Iterator[str]:
    """A temp dir for the instance; with ``backend="postgres"`` its ``dagster.yaml`` points
    the run, event log and schedule storages at a fresh database (dropped on exit)."""
    with tempfile.TemporaryDirectory() as home:
        if params.get("backend", "sqlite") == "sqlite":
            yield home
            return
        with postgres_database() as url:
            # dagster-postgres is written for psycopg2 (its NOTIFY binds a parameter, which
            # psycopg 3's server-side binding refuses); SQLAlchemy 2.1 would pick psycopg 3.
            driver = url.replace("postgresql://", "postgresql+psycopg2://", 1)
            _write_config(home, {"storage": {"postgres": {"postgres_url": driver}}})
            yield home


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
    with _home(params) as home:
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
        # dagster-postgres's store_event_batch takes asset materializations and observations
        # only (it refuses LOG entries); its other events go one by one, as SQLite's do.
        storage = type(self._instance.event_log_storage)
        self._one_by_one = storage.__module__.startswith("dagster_postgres")

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
        """``event_log_storage.store_event_batch`` (SQLite storage stores them one by one);
        on dagster-postgres, which has no batch write of LOG entries, ``store_event`` each."""
        entries = [self._entry(i) for i in range(start, start + count)]
        if self._one_by_one:
            for entry in entries:
                self._instance.store_event(entry)
        else:
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
    with _home(params) as home:
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
    """Events per second, in total, from several writer processes on the same run (one
    SQLite file, or one PostgreSQL database)."""
    with _home(params) as home:
        run_id = prepare_events_home(home)
        return run_concurrent_writers("bench_dagster", home, run_id, params)


#: Tags Dagster's run-row builder copies into columns of their own (a row cannot be reused).
_ROW_TAGS = frozenset({"dagster/partition", "dagster/partition_set", "dagster/backfill"})


def _insert_runs(instance: Any, runs: Sequence[Any], chunk: int = 5000) -> None:
    """Insert ``runs`` into Dagster's own run tables, ``chunk`` runs per transaction.

    Rows are built by Dagster's run-row builder (``_get_run_insertion_values``), exactly what
    ``add_run`` would write; only the per-run transaction is skipped. The builder queries the
    storage for each run (does the job snapshot exist, is there a backfill column; on
    dagster-postgres each query opens a connection), so runs sharing a job snapshot (or
    having none) reuse the first one's row, with their own id, job name, status and body.
    """
    from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
    from dagster._serdes import serialize_value

    storage = instance.run_storage
    base = datetime.now(UTC)
    built: dict[Any, dict[str, Any]] = {}
    for first in range(0, len(runs), chunk):
        rows: list[dict[str, Any]] = []
        tags: list[dict[str, str]] = []
        for run in runs[first : first + chunk]:
            like = built.get(run.job_snapshot_id)
            if like is None or run.tags.keys() & _ROW_TAGS:
                values = storage._get_run_insertion_values(run, base)
                built.setdefault(run.job_snapshot_id, values)
            else:
                values = {
                    **like,
                    "run_id": run.run_id,
                    "pipeline_name": run.job_name,
                    "status": run.status.value,
                    "run_body": serialize_value(run),
                }
            rows.append(values)
            tags.extend({"run_id": run.run_id, "key": k, "value": v} for k, v in run.tags.items())
        with storage.connect() as conn:
            conn.execute(RunsTable.insert(), rows)
            if tags:
                conn.execute(RunTagsTable.insert(), tags)


def _bulk_fill(instance: Any, n_runs: int) -> None:
    """Insert ``n_runs`` runs shaped by ``fill_row`` (see ``_insert_runs``)."""
    _insert_runs(instance, [_new_run(str(uuid.uuid4()), *fill_row(i)) for i in range(n_runs)])


def case_query(params: dict[str, Any]) -> dict[str, Any]:
    """``get_run_records(RunsFilter(statuses=[SUCCESS], tags={"team": "a"}), limit=100)``."""
    from dagster import DagsterRunStatus, RunsFilter

    with _home(params) as home:
        instance = _instance(home)
        fill_start = time.perf_counter()
        _bulk_fill(instance, params["n_runs"])
        fill_seconds = time.perf_counter() - fill_start
        _settle(home)
        runs_filter = RunsFilter(statuses=[DagsterRunStatus.SUCCESS], tags={"team": "a"})

        def once() -> None:
            records = instance.get_run_records(runs_filter, limit=100)
            assert len(records) == 100, len(records)

        result = summary_ms(time_calls(once, Repeat.for_mode(params["quick"])))
        result["fill_seconds"] = fill_seconds
        instance.dispose()
    return {"time": result}


# --- queued coordination ---------------------------------------------------------------------


def _queued_instance(home: str, *, limits: bool, max_concurrent_runs: int = -1) -> Any:
    """A SQLite instance at ``home`` with ``QueuedRunCoordinator`` and ``NoopRunLauncher``.

    With ``limits`` it carries the workload's 50 tag limits and run-granularity pools (under
    ``concurrency:`` in ``dagster.yaml``, as Dagster documents them).
    """
    runs: dict[str, Any] = {"max_concurrent_runs": max_concurrent_runs}
    concurrency: dict[str, Any] = {"runs": runs}
    if limits:
        runs["tag_concurrency_limits"] = queue_tag_limits()
        concurrency["pools"] = {"granularity": "run"}
    config = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        },
        "run_launcher": {"module": "dagster_jobs", "class": "NoopRunLauncher"},
        "concurrency": concurrency,
    }
    _write_config(home, config)
    return _instance(home)


@contextmanager
def _workspace(instance: Any) -> Iterator[Any]:
    """A daemon workspace (as Dagster's daemon tests build it) holding the queue jobs'
    code location, ``dagster_jobs:queue_definitions``, loaded in this process."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = LoadableTargetOrigin(
        python_file=str(Path(BENCH_DIR, "dagster_jobs.py")),
        attribute="queue_definitions",
        working_directory=BENCH_DIR,
    )
    target = InProcessWorkspaceLoadTarget(
        InProcessCodeLocationOrigin(origin, location_name="bench")
    )
    with create_test_daemon_workspace_context(target, instance) as context:
        yield context


class _Submitter:
    """Creates and submits runs of the queue jobs the way Dagster's own tools do:
    ``create_run_for_job`` with the job's remote and Python origins, then ``submit_run``."""

    def __init__(self, instance: Any, context: Any) -> None:
        import dagster_jobs

        self.instance = instance
        self.request = context.create_request_context()
        self.jobs = dagster_jobs.queue_jobs(queue_pool_names())
        location = self.request.get_code_location("bench")
        (repo,) = location.get_repositories().values()
        self.remote = {pool: repo.get_full_job(job.name) for pool, job in self.jobs.items()}

    def create(self, pool: str | None, tags: dict[str, str]) -> Any:
        """A NOT_STARTED run of the job for ``pool``."""
        remote = self.remote[pool]
        return self.instance.create_run_for_job(
            self.jobs[pool],
            remote_job_origin=remote.get_remote_origin(),
            job_code_origin=remote.get_python_origin(),
            tags=tags,
        )

    def submit(self, pool: str | None, tags: dict[str, str]) -> Any:
        """Create a run and submit it to the instance's (queued) coordinator."""
        run = self.create(pool, tags)
        return self.instance.submit_run(run.run_id, self.request)


def _count(instance: Any, status: str) -> int:
    from dagster import DagsterRunStatus, RunsFilter

    return int(instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus[status]])))


def case_enqueue(params: dict[str, Any]) -> dict[str, Any]:
    """Runs enqueued per second: ``create_run_for_job`` + ``instance.submit_run``."""
    count = params["count"]
    with tempfile.TemporaryDirectory() as home:
        instance = _queued_instance(home, limits=False)
        with _workspace(instance) as context:
            submitter = _Submitter(instance, context)
            assert submitter.submit(None, {}).status.value == "QUEUED"  # warm-up and check
            tags = [queue_free_run(i)[1] for i in range(count)]

            def trial() -> float:
                start = time.perf_counter()
                for run_tags in tags:
                    submitter.submit(None, run_tags)
                return time.perf_counter() - start

            result = median_rate(count, trial, params["trials"])
            assert _count(instance, "QUEUED") == 1 + count * params["trials"]
        instance.dispose()
    return {"rate": result}


def _fill_blocked_queue(home: str, n_queued: int) -> float:
    """Fill the instance at ``home`` like runcore's blocked queue; return the seconds taken.

    One run per job is created with ``create_run_for_job`` (real snapshots, origins and pool
    info; it stays NOT_STARTED, outside the queue); copies of it with new ids, statuses and
    tags are inserted in bulk (``_insert_runs``): the in-progress runs that saturate every
    limit as STARTING (what a no-op launch leaves), then the ``n_queued`` queued runs. Runs
    that are never dequeued need nothing else, and one by one the fill would take minutes.
    """
    from dagster import DagsterRunStatus

    start = time.perf_counter()
    instance = _queued_instance(home, limits=True)
    for pool in queue_pool_names():
        instance.event_log_storage.set_concurrency_slots(pool, QUEUE_POOL_LIMIT)
    with _workspace(instance) as context:
        submitter = _Submitter(instance, context)
        templates = {pool: submitter.create(pool, {}) for pool in submitter.jobs}

    def copy(pool: str | None, tags: dict[str, str], status: Any) -> Any:
        return templates[pool]._replace(run_id=str(uuid.uuid4()), status=status, tags=tags)

    active = [copy(p, t, DagsterRunStatus.STARTING) for p, t in queue_saturating_runs()]
    queued = [copy(*queue_blocked_run(i), DagsterRunStatus.QUEUED) for i in range(n_queued)]
    _insert_runs(instance, active + queued)
    instance.dispose()
    return time.perf_counter() - start


def _daemon() -> Any:
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    return QueuedRunCoordinatorDaemon(interval_seconds=1)


def case_dequeue_blocked(params: dict[str, Any]) -> dict[str, Any]:
    """One ``QueuedRunCoordinatorDaemon.run_iteration`` over a queue where every run is held
    (see ``bench_runcore.case_dequeue_blocked``). Daemon, instance and workspace are created
    after the fill; the first iteration is timed alone, then the steady ones."""
    n_queued = params["n_queued"]
    n_active = len(queue_saturating_runs())
    max_runs = n_active if params["blocker"] == "global" else -1
    with _home(params) as home:
        fill_seconds = _fill_blocked_queue(home, n_queued)
        instance = _queued_instance(home, limits=True, max_concurrent_runs=max_runs)
        with _workspace(instance) as context:
            daemon = _daemon()
            assert _count(instance, "QUEUED") == n_queued
            assert _count(instance, "STARTING") == n_active

            def once() -> None:
                list(daemon.run_iteration(context))

            start = time.perf_counter()
            once()
            first = time.perf_counter() - start
            steady = summary_ms(time_calls(once, _blocked_repeat(params)))
            assert _count(instance, "QUEUED") == n_queued, "a blocked run was launched"
            assert _count(instance, "STARTING") == n_active
            if params["blocker"] == "limits":
                _check_only_limits_hold(instance, context, daemon)
        instance.dispose()
    steady.update(count=n_queued, fill_seconds=fill_seconds)
    first_ms = {"value": first * 1000.0, "unit": "ms", "reps": 1, "count": n_queued}
    return {"first": first_ms, "steady": steady}


def _check_only_limits_hold(instance: Any, context: Any, daemon: Any) -> None:
    """A run no limit covers starts at once: the queued runs are held by their limits."""
    free = _Submitter(instance, context).submit(None, queue_free_run(0)[1])
    list(daemon.run_iteration(context))
    assert instance.get_run_by_id(free.run_id).status.value == "STARTING"
    assert _count(instance, "STARTING") == len(queue_saturating_runs()) + 1


def _blocked_repeat(params: dict[str, Any]) -> Repeat:
    """The usual policy, or ``params["reps"]`` passes (one warm-up) for slow passes."""
    reps = params.get("reps")
    if reps is None:
        return Repeat.for_mode(params["quick"])
    return Repeat(warmup=1, min_reps=reps, min_seconds=0.0, max_reps=reps)


def case_drain(params: dict[str, Any]) -> dict[str, Any]:
    """Runs launched per second: daemon iterations until ``n_queued`` free runs are started.

    No limits, ``NoopRunLauncher``. The runs are created and submitted one by one (untimed),
    so each has what a real submission leaves (its enqueued event and event-log shard).
    """
    n_queued = params["n_queued"]
    passes: list[int] = []

    def trial() -> float:
        with tempfile.TemporaryDirectory() as home:
            instance = _queued_instance(home, limits=False)
            with _workspace(instance) as context:
                submitter = _Submitter(instance, context)
                for i in range(n_queued):
                    submitter.submit(None, queue_free_run(i)[1])
            instance.dispose()
            instance = _queued_instance(home, limits=False)
            with _workspace(instance) as context:
                daemon = _daemon()
                count = 0
                start = time.perf_counter()
                while _count(instance, "QUEUED"):
                    list(daemon.run_iteration(context))
                    count += 1
                elapsed = time.perf_counter() - start
                assert _count(instance, "STARTING") == n_queued
            instance.dispose()
        passes.append(count)
        return elapsed

    result = median_rate(n_queued, trial, params["trials"])
    result["calls"] = max(passes)  # daemon iterations per drain
    return {"rate": result}


# --- launching a run ---------------------------------------------------------------------------

#: The 1-op job both launch cases start (``dagster_launch_jobs.single``, one op ``op_0``).
LAUNCH_FILE = str(Path(BENCH_DIR, "dagster_launch_jobs.py"))
#: Seconds one launched run may take before the case fails.
LAUNCH_WAIT = 600.0


def _first_step_start(instance: Any, run_id: str) -> float:
    """The timestamp of the run's first STEP_START event."""
    from dagster import DagsterEventType

    entries = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    assert entries, f"run {run_id} has no STEP_START event"
    return float(min(entry.timestamp for entry in entries))


def _launch_result(
    latencies: list[float], key: str, seconds: list[float], warmup: int
) -> dict[str, Any]:
    """The median latency (no p99: a few runs only), with the median of ``seconds`` as
    ``key`` (ms) and the warm-up count in its details."""
    median = latency_ms(latencies)["median"]
    del median["p99"]
    median.update({key: statistics.median(seconds) * 1000.0, "warmup": warmup})
    return {"median": median}


def case_launch_cli(params: dict[str, Any]) -> dict[str, Any]:
    """Dagster's cold launch path: ``python -m dagster job execute -f dagster_launch_jobs.py
    -j single`` (its default executor, multiprocess: the op runs in a step process).

    A persistent ``DAGSTER_HOME`` in a temp dir (empty ``dagster.yaml``: defaults), created
    by the untimed warm-up executions. Per execution: the wall clock just before the command
    starts, then the run's STEP_START timestamp read back from the instance afterwards;
    ``wall_ms`` is the whole command's wall time.
    """
    warmup, n_runs = params["warmup"], params["runs"]
    command = [sys.executable, "-m", "dagster", "job", "execute", "-f", LAUNCH_FILE, "-j", "single"]
    starts: list[float] = []
    walls: list[float] = []
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").touch()
        env = {**os.environ, "DAGSTER_HOME": home}
        for _ in range(warmup + n_runs):
            start = time.time()
            proc = subprocess.run(
                command,
                env=env,
                cwd=BENCH_DIR,
                capture_output=True,
                text=True,
                timeout=LAUNCH_WAIT,
                check=False,
            )
            walls.append(time.time() - start)
            starts.append(start)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
                raise RuntimeError(f"dagster job execute exited {proc.returncode}:\n{tail}")
        instance = _instance(home)
        runs = list(reversed(instance.get_runs()))  # oldest first: the order they ran in
        assert len(runs) == len(starts), (len(runs), len(starts))
        assert all(run.status.value == "SUCCESS" for run in runs)
        latencies = [
            _first_step_start(instance, run.run_id) - start
            for run, start in zip(runs, starts, strict=True)
        ]
        instance.dispose()
    return _launch_result(latencies[warmup:], "wall_ms", walls[warmup:], warmup)


def case_launch_launcher(params: dict[str, Any]) -> dict[str, Any]:
    """Dagster's launch path through its default run launcher, with the code already loaded.

    A SQLite instance with ``DefaultRunCoordinator`` (``submit_run`` launches at once; 1.13's
    default, the queued coordinator, would wait for a daemon) and the default
    ``DefaultRunLauncher``; a workspace (``WorkspaceProcessContext``) whose code location,
    ``dagster_launch_jobs.py``, is served by a gRPC code server process it starts. Per run:
    the wall clock, then ``create_run_for_job`` + ``instance.submit_run(run_id, workspace)``
    (the launcher asks the code server to start a run process); once the run has ended, its
    STEP_START timestamp minus that clock. ``submit_ms``: the two calls (create and submit),
    as runcore's ``submit_run`` does both.
    """
    import dagster_launch_jobs
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import PythonFileTarget

    warmup, n_runs = params["warmup"], params["runs"]
    latencies: list[float] = []
    submits: list[float] = []
    with tempfile.TemporaryDirectory() as home:
        coordinator = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
        Path(home, "dagster.yaml").write_text(json.dumps({"run_coordinator": coordinator}))
        instance = _instance(home)
        target = PythonFileTarget(
            python_file=LAUNCH_FILE,
            attribute="defs",
            working_directory=BENCH_DIR,
            location_name="bench",
        )
        with WorkspaceProcessContext(instance, target) as context:
            request = context.create_request_context()
            (repo,) = request.get_code_location("bench").get_repositories().values()
            remote = repo.get_full_job("single")
            for i in range(warmup + n_runs):
                start = time.time()
                run = instance.create_run_for_job(
                    dagster_launch_jobs.single,
                    remote_job_origin=remote.get_remote_origin(),
                    job_code_origin=remote.get_python_origin(),
                )
                instance.submit_run(run.run_id, request)
                submitted = time.time()
                deadline = time.monotonic() + LAUNCH_WAIT
                while not (done := instance.get_run_by_id(run.run_id)).is_finished:
                    assert time.monotonic() < deadline, f"run {run.run_id} did not finish"
                    time.sleep(0.01)
                assert done.status.value == "SUCCESS", done.status
                if i >= warmup:
                    latencies.append(_first_step_start(instance, run.run_id) - start)
                    submits.append(submitted - start)
        instance.dispose()
    return _launch_result(latencies, "submit_ms", submits, warmup)


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
    "launch_cli": case_launch_cli,
    "launch_launcher": case_launch_launcher,
}
