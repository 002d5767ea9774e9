"""runcore side of every benchmark case; run only inside a worker subprocess (see ``worker.py``).

Each ``case_*`` function takes the case parameters and returns ``{metric: measurement}``.
Storage cases use the storage directly: ``SqliteStorage`` on a temp dir, or with
``backend="postgres"`` ``PostgresStorage`` in a fresh schema of the benchmark server, dropped
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from _harness import (
    QUEUE_POOL_LIMIT,
    Repeat,
    expected_output,
    fill_row,
    latency_ms,
    median_rate,
    postgres_schema,
    postgres_settle,
    postgres_url,
    queue_blocked_run,
    queue_free_run,
    queue_pool_names,
    queue_saturating_runs,
    queue_tag_limits,
    summary_ms,
    time_calls,
)
from _writers import race, run_concurrent_writers, time_sink

import runcore as rc
from runcore.runs import ISOLATION_TAG
from runcore.storage import InstanceStorage, SqliteStorage

FILL_BATCH = 1_000
BENCH_DIR = str(Path(__file__).resolve().parent)


def _sqlite_instance(home: str) -> rc.Instance:
    """A SQLite-backed runcore instance on ``home``/runs.db (a context manager)."""
    return rc.Instance.from_config({"storage": {"sqlite": {"path": f"{home}/runs.db"}}})


#: Where a case's storage lives, as the ``storage:`` section of an instance config:
#: ``{"sqlite": {"path": ...}}`` or ``{"postgres": {"url": ..., "schema": ...}}``.
StorageSpec = dict[str, Any]


@contextmanager
def _storage_spec(params: dict[str, Any], home: str) -> Iterator[StorageSpec]:
    """The storage of a case: ``home``/runs.db, or (``backend="postgres"``) a fresh schema on
    the benchmark server, dropped with its tables on exit."""
    if params.get("backend", "sqlite") == "sqlite":
        yield {"sqlite": {"path": f"{home}/runs.db"}}
        return
    with postgres_schema() as schema:
        yield {"postgres": {"url": postgres_url(), "schema": schema}}


def _open(spec: StorageSpec) -> InstanceStorage:
    if "postgres" in spec:
        from runcore.storage.postgres import PostgresStorage

        return PostgresStorage(spec["postgres"]["url"], schema=spec["postgres"]["schema"])
    return SqliteStorage(spec["sqlite"]["path"])


@contextmanager
def _storage(spec: StorageSpec) -> Iterator[InstanceStorage]:
    """A started storage at ``spec``, closed on exit."""
    storage = _open(spec)
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
    with (
        tempfile.TemporaryDirectory() as home,
        _storage_spec(params, home) as spec,
        _storage(spec) as storage,
    ):
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
    """Writes LOG events for one run into a storage (``SqliteStorage``, ``PostgresStorage``)."""

    def __init__(self, spec: StorageSpec, run_id: str) -> None:
        self._storage = _open(spec)
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


def prepare_events_db(spec: StorageSpec) -> str:
    """Create the storage at ``spec`` with one STARTED run; return the run's id."""
    run = _new_run("etl", "STARTED", {})
    with _storage(spec) as storage:
        storage.add_run(run)
    return run.run_id


def open_sink(spec: StorageSpec, run_id: str) -> RuncoreEventSink:
    """Entry point for writer processes (see ``_writers.py``)."""
    return RuncoreEventSink(spec, run_id)


def case_store_events(params: dict[str, Any]) -> dict[str, Any]:
    """Events stored per second by a single writer, one at a time or in batches."""
    with tempfile.TemporaryDirectory() as home, _storage_spec(params, home) as spec:
        run_id = prepare_events_db(spec)
        sink = open_sink(spec, run_id)
        try:
            sink.store_one(-1)  # warm-up
            count, batch = params["count"], params["batch"]
            result = median_rate(count, lambda: time_sink(sink, count, batch), params["trials"])
        finally:
            sink.close()
    return {"rate": result}


def case_writers(params: dict[str, Any]) -> dict[str, Any]:
    """Events per second, in total, from several writer processes on the same database."""
    with tempfile.TemporaryDirectory() as home, _storage_spec(params, home) as spec:
        run_id = prepare_events_db(spec)
        return run_concurrent_writers("bench_runcore", spec, run_id, params)


def _fill(storage: InstanceStorage, n_runs: int) -> None:
    """Add ``n_runs`` runs shaped by ``fill_row`` with ``add_runs``, ``FILL_BATCH`` at a time."""
    for first in range(0, n_runs, FILL_BATCH):
        storage.add_runs(
            [_new_run(*fill_row(i)) for i in range(first, min(first + FILL_BATCH, n_runs))]
        )


def case_query(params: dict[str, Any]) -> dict[str, Any]:
    """``get_run_records(RunsFilter(statuses=[SUCCESS], tags={"team": "a"}), limit=100)``."""
    runs_filter = rc.RunsFilter(statuses=[rc.RunStatus.SUCCESS], tags={"team": "a"})
    with (
        tempfile.TemporaryDirectory() as home,
        _storage_spec(params, home) as spec,
        _storage(spec) as storage,
    ):
        fill_start = time.perf_counter()
        _fill(storage, params["n_runs"])
        fill_seconds = time.perf_counter() - fill_start
        if "postgres" in spec:
            schema = spec["postgres"]["schema"]
            postgres_settle(f'"{schema}".runs, "{schema}".run_tags')

        def once() -> None:
            records = storage.get_run_records(runs_filter, limit=100)
            assert len(records) == 100, len(records)

        result = summary_ms(time_calls(once, Repeat.for_mode(params["quick"])))
    result["fill_seconds"] = fill_seconds
    return {"time": result}


# --- queued coordination ---------------------------------------------------------------------


def _queued_instance(
    spec: StorageSpec, *, limits: bool, max_concurrent_runs: int = -1
) -> rc.Instance:
    """An instance on ``spec`` with the queued coordinator and ``RecordingLauncher`` (runs
    nothing).

    With ``limits`` it carries the workload's 50 tag limits and run-granularity pools.
    """
    concurrency: dict[str, Any] = {"runs": {"max_concurrent_runs": max_concurrent_runs}}
    if limits:
        concurrency["runs"]["tag_concurrency_limits"] = queue_tag_limits()
        concurrency["pools"] = {"granularity": "run"}
    return rc.Instance.from_config(
        {
            "storage": spec,
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
        _queued_instance({"sqlite": {"path": f"{home}/runs.db"}}, limits=False) as inst,
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


def _fill_blocked_queue(spec: StorageSpec, n_queued: int) -> float:
    """Fill ``spec`` with in-progress runs saturating every limit (launched by a dequeue
    pass), then ``n_queued`` queued runs each held by one of them; return the seconds taken.

    On SQLite the queued runs are submitted one by one; on PostgreSQL (a few hundred commits a
    second) they are bulk-inserted as QUEUED (see :func:`_bulk_queue`)."""
    jobs = _queue_jobs()
    start = time.perf_counter()
    with _queued_instance(spec, limits=True) as inst:
        for pool in queue_pool_names():
            inst.set_pool_limit(pool, QUEUE_POOL_LIMIT)
        saturating = queue_saturating_runs()
        for pool, tags in saturating:
            inst.submit_run(jobs[pool], tags=tags)
        result = rc.Daemon(inst).dequeue_once()
        assert result is not None and len(result.launched) == len(saturating), result
        if "sqlite" in spec:
            for i in range(n_queued):
                pool, tags = queue_blocked_run(i)
                inst.submit_run(jobs[pool], tags=tags)
        else:
            _bulk_queue(inst, [queue_blocked_run(i) for i in range(n_queued)])
    return time.perf_counter() - start


def _bulk_queue(inst: rc.Instance, runs: list[tuple[str | None, dict[str, str]]]) -> None:
    """Store ``runs`` (pool, tags) as QUEUED runs of the queue jobs, ``FILL_BATCH`` per
    ``add_runs`` call: copies (new id and tags) of one run per job made by
    ``Instance.create_run``, so pools and code location are what ``submit_run`` stores. The
    templates themselves stay NOT_STARTED, outside the queue; the copies carry no QUEUED event
    (no pass reads one)."""
    jobs = _queue_jobs()
    templates = {pool: inst.create_run(job) for pool, job in jobs.items()}
    queued = [
        attrs.evolve(
            templates[pool], run_id=str(uuid.uuid4()), status=rc.RunStatus.QUEUED, tags=tags
        )
        for pool, tags in runs
    ]
    for first in range(0, len(queued), FILL_BATCH):
        inst.storage.add_runs(queued[first : first + FILL_BATCH])


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
    with tempfile.TemporaryDirectory() as home, _storage_spec(params, home) as spec:
        fill_seconds = _fill_blocked_queue(spec, n_queued)
        with _queued_instance(spec, limits=True, max_concurrent_runs=max_runs) as inst:
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
            spec = {"sqlite": {"path": f"{home}/runs.db"}}
            with _queued_instance(spec, limits=False) as inst:
                for i in range(n_queued):
                    inst.submit_run(job, tags=queue_free_run(i)[1])
            with _queued_instance(spec, limits=False) as inst:
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


class _RacingDaemon:
    """One of the daemons of :func:`case_admissions`, in a process of its own: a queued
    instance on the shared storage, passes until a pass finds the queue empty."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.inst = _queued_instance(job["spec"], limits=False)
        self.inst.ensure_started()
        self.daemon = rc.Daemon(self.inst)

    def run(self) -> dict[str, Any]:
        launched: list[str] = []
        passes = lost = 0
        while True:
            result = self.daemon.dequeue_once()
            assert result is not None
            passes += 1
            launched += result.launched
            lost += result.lost_races
            if not result.queued:
                return {"launched": launched, "passes": passes, "lost_races": lost}

    def close(self) -> None:
        self.inst.close()


def open_racing_daemon(job: dict[str, Any]) -> _RacingDaemon:
    """Entry point of the racing daemon processes (see ``_writers.race``)."""
    return _RacingDaemon(job)


def case_admissions(params: dict[str, Any]) -> dict[str, Any]:
    """Admissions per second with ``daemons`` daemon processes racing over one queue.

    ``n_queued`` free runs (no limits) are bulk-inserted as QUEUED; then ``daemons``
    processes, each with its own instance (queued coordinator, ``RecordingLauncher``) on the
    same storage, released together, run ``Daemon.dequeue_once()`` until a pass finds the
    queue empty. Admitted runs / time from the first start to the last end. Every run must
    be started exactly once: no run launched by two daemons, none left QUEUED.
    """
    n_queued, n_daemons = params["n_queued"], params["daemons"]
    passes: list[int] = []
    lost: list[int] = []

    def trial() -> float:
        with tempfile.TemporaryDirectory() as home, _storage_spec(params, home) as spec:
            with _queued_instance(spec, limits=False) as inst:
                _bulk_queue(inst, [queue_free_run(i) for i in range(n_queued)])
            racer = {"opener": f"{__name__}:open_racing_daemon", "spec": spec}
            seconds, reports = race(racer, n_daemons)
            launched = [run_id for report in reports for run_id in report["launched"]]
            assert len(launched) == len(set(launched)) == n_queued, (len(launched), n_queued)
            with _storage(spec) as storage:
                starting = storage.count_runs(rc.RunsFilter(statuses=[rc.RunStatus.STARTING]))
                left = storage.count_runs(rc.RunsFilter(statuses=[rc.RunStatus.QUEUED]))
            assert starting == n_queued and left == 0, (starting, left)
        passes.append(max(report["passes"] for report in reports))
        lost.append(sum(report["lost_races"] for report in reports))
        return seconds

    result = median_rate(n_queued, trial, params["trials"])
    result.update(calls=max(passes), lost_races=max(lost), daemons=n_daemons)
    return {"rate": result}


# --- launchers -------------------------------------------------------------------------------

#: Seconds any one wait of the launcher cases may take before the case fails.
LAUNCH_WAIT = 60.0
#: Warm workers kept by the warm subprocess launcher.
WARM_WORKERS = 2
#: A warm worker counts as ready when it sleeps reading its run id from its stdin pipe
#: (``/proc/PID/wchan``); where the kernel does not say, once it is this many seconds old.
WARM_READY_FALLBACK = 5.0
#: Seconds the code server's memory is left to settle before each RSS reading.
RSS_SETTLE = 0.5
CODE_SERVER_LAUNCHER = "runcore.launchers.code_server:CodeServerRunLauncher"
#: The token the benchmark's code servers require (given through the environment, not argv).
CODE_SERVER_TOKEN = secrets.token_urlsafe(32)


def _until(
    predicate: Callable[[], Any], what: str, timeout: float = LAUNCH_WAIT, interval: float = 0.002
) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def _code_server(home: str, storage: dict[str, Any], max_workers: int) -> Iterator[tuple[str, int]]:
    """A ``python -m runcore code-server`` process serving ``runcore_launch_jobs:defs`` on a
    free loopback port (``--port 0``, the port read from its "listening on" line); yields its
    address and pid. Stopped on exit by its ``Shutdown`` RPC (SIGTERM if that fails, SIGKILL
    if it does not exit)."""
    import runcore_launch_jobs

    out_path, err_path = Path(home, "code-server.out"), Path(home, "code-server.err")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [BENCH_DIR, env.get("PYTHONPATH")]))
    env["RUNCORE_CODE_SERVER_TOKEN"] = CODE_SERVER_TOKEN
    command = [
        sys.executable,
        "-m",
        "runcore",
        "code-server",
        "--location",
        runcore_launch_jobs.LOCATION,
        "--port",
        "0",
        "--max-workers",
        str(max_workers),
        "--log-interval",
        "0",
        "--instance",
        json.dumps({"storage": storage}),
    ]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=BENCH_DIR, env=env)
    address = ""

    def listening() -> str | None:
        if process.poll() is not None:
            tail = err_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the code server exited with code {process.returncode}: {tail}")
        found = re.search(r"listening on (\S+):(\d+) ", out_path.read_text(errors="replace"))
        return f"{found.group(1)}:{found.group(2)}" if found else None

    try:
        address = _until(listening, "the code server to listen", interval=0.01)
        yield address, process.pid
    finally:
        _stop_code_server(process, address)


def _stop_code_server(process: subprocess.Popen[bytes], address: str) -> None:
    """Ask the server to shut down (its held runs, if any, are canceled at once)."""
    from runcore.codeserver.client import CodeServerClient, CodeServerError

    if process.poll() is None:
        asked = False
        if address:
            with (
                contextlib.suppress(CodeServerError),
                contextlib.closing(
                    CodeServerClient(address, token=CODE_SERVER_TOKEN, timeout=5.0)
                ) as client,
            ):
                client.shutdown(0)
                asked = True
        if not asked:
            process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _launch_config(
    launcher: str, storage: dict[str, Any], address: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The instance config for ``launcher`` and the tags its runs carry.

    ``thread``: ``ThreadPoolRunLauncher`` (8 threads). ``code_server``: non-isolated runs go
    to ``CodeServerRunLauncher`` (no limit on how many are in progress), the runs are tagged
    non-isolated. ``warm``: ``SubprocessRunLauncher`` with ``WARM_WORKERS`` warm workers that
    preload the job's location. ``cold``: the SQLite default, ``SubprocessRunLauncher()``.
    """
    import runcore_launch_jobs

    config: dict[str, Any] = {"storage": storage}
    tags: dict[str, str] = {}
    if launcher == "thread":
        config["run_launcher"] = {"class": "runcore.launchers:ThreadPoolRunLauncher"}
    elif launcher == "code_server":
        config["non_isolated_runs"] = {
            "max_concurrent_runs": -1,
            "launcher": {
                "class": CODE_SERVER_LAUNCHER,
                "config": {"addresses": [address], "token": CODE_SERVER_TOKEN},
            },
        }
        tags = {ISOLATION_TAG: "non_isolated"}
    elif launcher == "warm":
        config["run_launcher"] = {
            "class": "runcore.launchers:SubprocessRunLauncher",
            "config": {"warm_workers": WARM_WORKERS, "preload": [runcore_launch_jobs.LOCATION]},
        }
    elif launcher != "cold":
        raise ValueError(f"unknown launcher {launcher!r}")
    return config, tags


def _reading_its_pipe(pid: int) -> bool | None:
    """Whether process ``pid`` sleeps in a pipe read; None where ``/proc`` does not say."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return None
    return "pipe_read" in wchan


def _ready_warm_pids(inst: rc.Instance) -> set[int]:
    """Wait until the warm launcher holds ``WARM_WORKERS`` ready workers; return their pids.

    Ready: the worker has imported runcore and the job's location, opened the storage, said
    ``ready`` and sleeps reading its run id from stdin. (The launcher keeps no public count of
    ready workers, so this reads its idle list, as runcore's own tests do.)
    """
    launcher = inst.run_launcher

    def ready() -> set[int] | None:
        idle = list(launcher._idle)  # type: ignore[attr-defined]
        if len(idle) < WARM_WORKERS:
            return None
        for worker in idle:
            pid = worker.process.pid
            reading = _reading_its_pipe(pid)
            if not reading and not (
                reading is None and time.time() - worker.started >= WARM_READY_FALLBACK
            ):
                return None
        return {worker.process.pid for worker in idle}

    pids: set[int] = _until(ready, f"{WARM_WORKERS} ready warm workers", interval=0.01)
    return pids


def _wait_exited(pid: int) -> None:
    """Wait until worker process ``pid`` has exited and been reaped."""
    import psutil

    _until(lambda: not psutil.pid_exists(pid), f"worker process {pid} to exit")


def _worker_pid(inst: rc.Instance, run_id: str) -> int:
    """The pid of the run's worker process, from its worker record (or, for runcore before
    worker records, which ``compare.py`` may run, from the run's ``runcore/worker_pid`` tag)."""
    storage = inst.storage
    if not hasattr(storage, "get_worker_record"):
        run = storage.get_run(run_id)
        assert run is not None and "runcore/worker_pid" in run.tags, "no worker was recorded"
        return int(run.tags["runcore/worker_pid"])
    worker = storage.get_worker_record(run_id)
    assert worker is not None, "the launcher recorded no worker"
    return int(worker.handle["pid"])


def case_launch(params: dict[str, Any]) -> dict[str, Any]:
    """Submit-to-first-step latency of one launcher, on a SQLite instance.

    Per run: the wall clock just before ``instance.submit_run(single)``, then, once the run has
    ended, the timestamp of its STEP_START event read back from storage; the latency is the
    difference. Runs go one at a time, each waited for (and, for worker processes, its process
    reaped) before the next is submitted. ``warm``: before each submit, the launcher must hold
    ``WARM_WORKERS`` ready workers, and the run must go to one of them.
    """
    import runcore_launch_jobs

    launcher = params["launcher"]
    latencies: list[float] = []
    submits: list[float] = []
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        storage = {"sqlite": {"path": f"{home}/runs.db"}}
        address = None
        if launcher == "code_server":
            address, _ = stack.enter_context(_code_server(home, storage, max_workers=8))
        config, tags = _launch_config(launcher, storage, address)
        inst = stack.enter_context(rc.Instance.from_config(config))  # closed before the server
        for i in range(params["warmup"] + params["runs"]):
            warm_pids = _ready_warm_pids(inst) if launcher == "warm" else set()
            start = time.time()
            run = inst.submit_run(
                runcore_launch_jobs.single, tags=tags, code_location=runcore_launch_jobs.LOCATION
            )
            submitted = time.time()
            done = inst.wait_for_run(run.run_id, timeout=LAUNCH_WAIT)
            assert done.status is rc.RunStatus.SUCCESS, done.failure_reason
            (step, *_) = inst.get_events(run.run_id, event_types=[rc.EventType.STEP_START])
            if launcher in ("warm", "cold"):
                pid = _worker_pid(inst, run.run_id)
                assert launcher == "cold" or pid in warm_pids, "the run did not get a warm worker"
                _wait_exited(pid)
            if i >= params["warmup"]:
                latencies.append(step.timestamp - start)
                submits.append(submitted - start)
    result = latency_ms(latencies)
    submit_ms = statistics.median(submits) * 1000.0
    for measurement in result.values():
        measurement.update(warmup=params["warmup"], submit_ms=submit_ms)
    return result


def case_code_server_memory(params: dict[str, Any]) -> dict[str, Any]:
    """Resident memory per run thread of a code server holding sleeping non-isolated runs.

    A code server with ``--max-workers N``; one run of ``single`` through
    ``CodeServerRunLauncher`` as a warm-up; its RSS (idle); then N non-isolated runs of
    ``sleepy`` (its op waits for a cancel); once every one has started its step, its RSS
    again. (RSS with - RSS idle) / N, in KiB. Then every run is canceled and must end
    CANCELED.
    """
    import psutil
    import runcore_launch_jobs as jobs

    n_runs = params["runs"]
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        storage = {"sqlite": {"path": f"{home}/runs.db"}}
        address, pid = stack.enter_context(_code_server(home, storage, max_workers=n_runs))
        config, tags = _launch_config("code_server", storage, address)
        inst = stack.enter_context(rc.Instance.from_config(config))
        server = psutil.Process(pid)
        first = inst.submit_run(jobs.single, tags=tags, code_location=jobs.LOCATION)
        assert inst.wait_for_run(first.run_id, timeout=LAUNCH_WAIT).status is rc.RunStatus.SUCCESS
        time.sleep(RSS_SETTLE)
        idle_rss, idle_threads = server.memory_info().rss, server.num_threads()
        ids = [
            inst.submit_run(jobs.sleepy, tags=tags, code_location=jobs.LOCATION).run_id
            for _ in range(n_runs)
        ]
        waiting = set(ids)

        def all_in_their_step() -> bool:
            for run_id in list(waiting):
                if inst.get_events(run_id, event_types=[rc.EventType.STEP_START]):
                    waiting.discard(run_id)
            return not waiting

        _until(all_in_their_step, f"{n_runs} runs to start their step", interval=0.05)
        time.sleep(RSS_SETTLE)
        busy_rss, busy_threads = server.memory_info().rss, server.num_threads()
        statuses = {inst.get_run(run_id).status for run_id in ids}
        assert statuses == {rc.RunStatus.STARTED}, statuses
        for run_id in ids:
            inst.cancel_run(run_id)
        for run_id in ids:
            done = inst.wait_for_run(run_id, timeout=LAUNCH_WAIT)
            assert done.status is rc.RunStatus.CANCELED, (run_id, done.status)
    mib = 1024.0 * 1024.0
    return {
        "rss_per_run": {
            "value": (busy_rss - idle_rss) / n_runs / 1024.0,
            "unit": "KiB",
            "count": n_runs,
            "idle_rss_mib": idle_rss / mib,
            "busy_rss_mib": busy_rss / mib,
            "threads": f"{idle_threads} -> {busy_threads}",
        }
    }


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
    "admissions": case_admissions,
    "launch": case_launch,
    "code_server_memory": case_code_server_memory,
}
