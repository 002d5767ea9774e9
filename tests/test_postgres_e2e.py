"""Many processes on one PostgreSQL database: racing daemons, real run workers, lost connections.

Daemons here are real processes (``spawn``, or ``runcore daemon``); the scenarios that stop
processes with signals run inside a child pid namespace (``in_pid_namespace``).
"""

from __future__ import annotations

import json
import multiprocessing
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests._postgres import URL, pg_schema  # noqa: F401 - the fixture
from tests.test_security import in_pid_namespace

import runcore as rc
from runcore.errors import StorageError
from runcore.storage.postgres import PostgresStorage, strip_password
from runcore.storage.sql.schema import SCHEMA_VERSION
from runcore.testing import RecordingLauncher


@rc.op
def noop() -> int:
    return 1


simple = rc.job("simple", [noop])


@rc.op(pool="db")
def query() -> int:
    return 1


pooled = rc.job("pooled", [query])

_LIMITS = {
    "max_concurrent_runs": 4,
    "tag_concurrency_limits": [
        {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
    ],
}


def _config(schema: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage": {"postgres": {"url": URL, "schema": schema, "pool": {"min": 1, "max": 4}}},
        "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
        "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
        "concurrency": {"runs": _LIMITS, "pools": {"granularity": "run"}},
        **extra,
    }


def _racing_daemon(schema: str, barrier: Any, out: Any, seed: int) -> None:
    """A daemon process: dequeue passes, finishing what it launched a little later."""
    import random
    import time

    rng = random.Random(seed)
    inst = rc.Instance.from_config(_config(schema))
    launcher = inst.run_launcher
    assert isinstance(launcher, RecordingLauncher)
    daemon = rc.Daemon(inst)
    barrier.wait()
    running: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        result = daemon.dequeue_once()
        assert result is not None
        running.extend(result.launched)
        while running and rng.random() < 0.5:
            launcher.finish(running.pop(rng.randrange(len(running))))
        if result.queued == 0 and not running:
            break
    out.put(launcher.launched_ids)
    inst.close()


def _peaks(
    storage: rc.storage.InstanceStorage, team_of: dict[str, str], pooled: set[str]
) -> tuple[int, int, int]:
    """The most runs in progress at once, the most of one team, and the most holding the pool
    ``db`` (runs of ``pooled``, at run granularity), read from the event log in storage order."""
    in_progress: set[str] = set()
    peak = team_peak = pool_peak = 0
    cursor = None
    while records := storage.get_events_after(cursor, 500):
        for record in records:
            event = record.event
            if event.event_type is rc.EventType.RUN_STARTING:
                in_progress.add(event.run_id)
            elif event.event_type in (rc.EventType.RUN_SUCCESS, rc.EventType.RUN_FAILURE):
                in_progress.discard(event.run_id)
            peak = max(peak, len(in_progress))
            per_team = [sum(team_of[r] == t for r in in_progress) for t in "abc"]
            team_peak = max(team_peak, *per_team)
            pool_peak = max(pool_peak, len(in_progress & pooled))
        cursor = records[-1].storage_id
    return peak, team_peak, pool_peak


@pytest.mark.slow
def test_two_daemon_processes_split_the_work_and_never_exceed_a_limit(pg_schema: str) -> None:  # noqa: F811
    """The issue's proof: two daemon processes on one database, 1,000 queued runs under a
    global limit, a per-team tag limit and a pool: each run starts exactly once, no limit is
    ever exceeded (replayed from the event log), every slot is free at the end."""
    with rc.Instance.from_config(_config(pg_schema)) as inst:
        inst.set_pool_limit("db", 1)
        teams = "abc"
        ids = {
            inst.submit_run(pooled if i % 5 == 0 else simple, tags={"team": teams[i % 3]}).run_id
            for i in range(1000)
        }
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_racing_daemon, args=(pg_schema, barrier, out, i)) for i in (1, 2)]
    for proc in procs:
        proc.start()
    launched = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert all(launched), "both daemons admitted runs"
    everything = launched[0] + launched[1]
    assert sorted(everything) == sorted(ids), "every run started exactly once"
    with rc.Instance.from_config(_config(pg_schema)) as inst:
        inst.ensure_started()
        runs = inst.get_runs()
        assert all(run.status is rc.RunStatus.SUCCESS for run in runs)
        pooled_ids = {run.run_id for run in runs if run.job_name == "pooled"}
        teams_of = {run.run_id: run.tags["team"] for run in runs}
        peak, team_peak, pool_peak = _peaks(inst.storage, teams_of, pooled_ids)
        assert inst.storage.get_pool_leases() == [], "every slot is free at the end"
    assert peak == 4, "the global limit is reached and never exceeded"
    assert team_peak == 2, "the per-team limit is reached and never exceeded"
    assert pool_peak == 1, "the pool's one slot is used and never by two runs at once"


_DAEMONS_SCENARIO = """
import json, os, subprocess, sys, time
import runcore as rc

project, n = sys.argv[1], int(sys.argv[2])
os.chdir(project)
inst = rc.Instance.from_config("runcore.yaml")
ids = [inst.submit_run("work", code_location="pipeline.py:defs").run_id for _ in range(n)]
env = {**os.environ}
daemons = [
    subprocess.Popen(
        [sys.executable, "-m", "runcore", "daemon", "--interval", "0.05"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, "DAEMON_NO": str(i)},
    )
    for i in range(2)
]
try:
    runs = [inst.wait_for_run(run_id, timeout=240) for run_id in ids]
finally:
    for d in daemons:
        d.terminate()
    for d in daemons:
        d.wait(timeout=60)
storage = inst.storage
workers = storage.get_worker_records(ids)
in_progress, peak, cursor = set(), 0, None
while records := storage.get_events_after(cursor, 500):
    for record in records:
        e = record.event
        if e.event_type is rc.EventType.RUN_STARTING:
            in_progress.add(e.run_id)
        elif e.event_type.value in ("RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED"):
            in_progress.discard(e.run_id)
        peak = max(peak, len(in_progress))
    cursor = records[-1].storage_id
starting = [
    r.event.run_id for r in storage.get_events_after(None, 100000)
    if r.event.event_type is rc.EventType.RUN_STARTING
]
pids = {json.dumps(w.handle, sort_keys=True) for w in workers.values()}
print(json.dumps({
    "statuses": sorted({r.status.value for r in runs}),
    "peak": peak,
    "starting": len(starting), "distinct_starting": len(set(starting)),
    "workers": len(workers), "handles": len(pids),
}))
inst.close()
"""

_PIPELINE = """
import os
import time
import runcore as rc

@rc.op
def work() -> int:
    time.sleep(0.2)
    return os.getpid()

defs = rc.Definitions(jobs=[rc.job("work", [work])])
"""


@pytest.mark.slow
def test_runcore_daemons_run_real_workers_on_one_database(
    pg_schema: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two ``runcore daemon`` processes and subprocess run workers that open the database from
    the storage's config (with no password in it): every run succeeds once, the limit holds."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.py").write_text(textwrap.dedent(_PIPELINE))
    (project / "runcore.yaml").write_text(
        textwrap.dedent(
            f"""
            storage:
              postgres: {{url: "{URL}", schema: {pg_schema}, pool: {{min: 1, max: 4}}}}
            run_coordinator:
              class: runcore.coordinators:QueuedRunCoordinator
            run_launcher:
              class: runcore.launchers:SubprocessRunLauncher
            concurrency:
              runs: {{max_concurrent_runs: 3}}
            """
        )
    )
    result = in_pid_namespace(_DAEMONS_SCENARIO, str(project), "24")
    assert result["statuses"] == ["SUCCESS"]
    assert result["starting"] == result["distinct_starting"] == 24, "each run started once"
    assert 1 <= result["peak"] <= 3, "max_concurrent_runs never exceeded"
    assert result["workers"] == 24 and result["handles"] == 24, "each run had its own worker"


# --- configs for other processes ----------------------------------------------------------------


def test_to_config_leaves_the_password_out_and_reopens_the_same_schema(
    pg_schema: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert strip_password("postgresql://u:s3cret@h:5432/db") == "postgresql://u@h:5432/db"
    assert strip_password("host=h user=u password=s3cret dbname=db") == "host=h user=u  dbname=db"
    with PostgresStorage(URL, schema=pg_schema) as storage:
        run = storage.add_run(rc.Run(run_id=str(uuid.uuid4()), job_name="j"))
        config = storage.to_config()
        assert "s3cret" not in json.dumps(config)
        assert config["postgres"]["schema"] == pg_schema
    with rc.Instance.from_config({"storage": config}) as inst:
        inst.ensure_started()
        assert inst.get_run(run.run_id) is not None
    monkeypatch.setenv("RUNCORE_POSTGRES_URL", URL)
    with rc.Instance.from_config({"storage": {"postgres": {"schema": pg_schema}}}) as inst:
        inst.ensure_started()
        assert inst.get_run(run.run_id) is not None


def test_a_password_in_the_url_never_reaches_a_worker_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = PostgresStorage("postgresql://runcore:hunter2@db.example:5432/rc", schema="s")
    assert "hunter2" not in json.dumps(storage.to_config())
    assert "hunter2" not in repr(storage)


# --- schema versions ----------------------------------------------------------------------------


def _sql(schema: str, statement: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(statement)


def test_a_newer_schema_is_refused_untouched(pg_schema: str) -> None:  # noqa: F811
    with PostgresStorage(URL, schema=pg_schema):
        pass
    _sql(pg_schema, "UPDATE runcore_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(rc.errors.SchemaVersionError, match="newer runcore"):
        PostgresStorage(URL, schema=pg_schema).start()
    with pytest.raises(rc.errors.SchemaVersionError, match="newer runcore"):
        PostgresStorage(URL, schema=pg_schema).migrate()


def test_a_schema_of_other_tables_is_refused_untouched(pg_schema: str) -> None:  # noqa: F811
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'CREATE TABLE "{pg_schema}".orders (id INT)')
    with pytest.raises(rc.errors.SchemaVersionError, match="not a runcore one"):
        PostgresStorage(URL, schema=pg_schema).start()
    with psycopg.connect(URL) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg_schema,)
        ).fetchall()
    assert tables == [("orders",)]


def test_an_older_schema_needs_migrate_then_opens(pg_schema: str) -> None:  # noqa: F811
    with PostgresStorage(URL, schema=pg_schema):
        pass
    _sql(pg_schema, "DROP TABLE workers")
    _sql(pg_schema, "UPDATE runcore_meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(rc.errors.SchemaVersionError, match="runcore instance migrate"):
        PostgresStorage(URL, schema=pg_schema).start()
    assert PostgresStorage(URL, schema=pg_schema).migrate() == (1, SCHEMA_VERSION)
    with PostgresStorage(URL, schema=pg_schema) as storage:
        assert storage.get_worker_records(["x"]) == {}


# --- transient failures -------------------------------------------------------------------------


def test_terminated_backends_are_retried_without_losing_or_doubling_events(
    pg_schema: str,  # noqa: F811
) -> None:
    with PostgresStorage(URL, schema=pg_schema, pool_min=2, pool_max=2) as storage:
        storage.add_run(rc.Run(run_id="r1", job_name="j"))
        for i in range(20):
            storage.store_event(
                rc.Event(run_id="r1", event_type=rc.EventType.ENGINE_EVENT, message=str(i))
            )
            if i % 5 == 0:
                with psycopg.connect(URL, autocommit=True) as admin:
                    admin.execute(  # this test's connections only, not other schemas'
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND pid <> pg_backend_pid()",
                        (f"runcore:{pg_schema}",),
                    )
        messages = [r.event.message for r in storage.get_event_records("r1")]
    assert messages == [str(i) for i in range(20)]


def test_an_unreachable_server_is_a_storage_error_with_the_cause() -> None:
    from runcore._retry import RetrySettings

    storage = PostgresStorage(
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1",
        schema="s",
        retry=RetrySettings(attempts=2, initial_wait=0.01, max_wait=0.02),
    )
    with pytest.raises(StorageError, match="PostgreSQL") as raised:
        storage.start()
    assert isinstance(raised.value.__cause__, psycopg.Error)


def test_the_daemon_judges_ages_by_the_server_clock(pg_schema: str) -> None:  # noqa: F811
    storage = PostgresStorage(URL, schema=pg_schema)
    with rc.Instance(storage=storage) as inst:
        daemon = rc.Daemon(inst)
        assert daemon.clock == storage.clock
        assert abs(storage.clock() - time.time()) < 1.0  # one host: the same clock, measured


def _event(message: str, run_id: str = "r1") -> rc.Event:
    return rc.Event(run_id=run_id, event_type=rc.EventType.ENGINE_EVENT, message=message)


def test_a_backend_terminated_mid_transaction_is_retried_once_through(
    pg_schema: str,  # noqa: F811
) -> None:
    """The server ends the connection inside a write (as a restart would): the transaction
    rolls back and is tried again on a fresh connection; its event is stored once."""
    from runcore.storage.sql.schema import INSERT_EVENT

    tries: list[int] = []
    with PostgresStorage(URL, schema=pg_schema) as storage:

        def write(conn: Any) -> None:
            tries.append(1)
            conn.execute(INSERT_EVENT, ("r1", "ENGINE_EVENT", None, 0.0, '{"x": 1}', "u-1"))
            if len(tries) == 1:
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        storage._write(write)
        count = storage._read("SELECT COUNT(*) FROM events WHERE uid = 'u-1'")[0][0]
    assert len(tries) == 2 and count == 1


class _LostAck(PostgresStorage):
    """A server that commits, then loses the connection before the client hears so: the
    network fault, injected at the edge (once)."""

    lose = 0

    def _commit(self, raw: Any) -> None:
        super()._commit(raw)
        if self.lose:
            self.lose -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")


def test_an_event_insert_retried_after_a_lost_commit_is_stored_once(
    pg_schema: str,  # noqa: F811
) -> None:
    with _LostAck(URL, schema=pg_schema) as storage:
        storage.lose = 1
        first = storage.store_event(_event("once"))
        storage.lose = 1
        storage.store_events([_event("a"), _event("b")])
        records = storage.get_event_records("r1")
    assert [r.event.message for r in records] == ["once", "a", "b"], "none lost, none doubled"
    assert records[0].storage_id == first


class _LostBeforeCommit(PostgresStorage):
    """A connection that breaks as the commit is sent, before the server commits: the
    transaction rolls back, and the client cannot tell it from a lost acknowledgement."""

    lose = 0

    def _commit(self, raw: Any) -> None:
        if self.lose:
            self.lose -= 1
            raw.execute("ROLLBACK")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        super()._commit(raw)


@pytest.mark.parametrize("storage_class", [_LostAck, _LostBeforeCommit])
def test_a_transition_whose_commit_was_lost_is_resolved_by_its_event(
    pg_schema: str,  # noqa: F811
    storage_class: type[_LostAck] | type[_LostBeforeCommit],
) -> None:
    """Whether the lost commit landed or not, the compare-and-set reports the move once (not
    None, as a blind retry would: the status had changed) and its event is stored once."""
    with storage_class(URL, schema=pg_schema) as storage:
        run = storage.add_run(rc.Run(run_id=str(uuid.uuid4()), job_name="j"))
        storage.lose = 1
        moved = storage.transition(run.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.QUEUED)
        stored = storage.get_run(run.run_id)
        events = storage.get_event_records(run.run_id)
    assert moved is not None and moved.status is rc.RunStatus.QUEUED
    assert stored is not None and stored.status is rc.RunStatus.QUEUED
    assert [r.event.event_type for r in events] == [rc.EventType.RUN_ENQUEUED]


@pytest.mark.parametrize("storage_class", [_LostAck, _LostBeforeCommit])
def test_a_new_run_and_a_worker_record_whose_commit_was_lost_are_resolved(
    pg_schema: str,  # noqa: F811
    storage_class: type[_LostAck] | type[_LostBeforeCommit],
) -> None:
    from runcore.storage.base import WorkerRecord

    with storage_class(URL, schema=pg_schema) as storage:
        storage.lose = 1
        run = storage.add_run(rc.Run(run_id=str(uuid.uuid4()), job_name="j"))  # no DuplicateRun
        storage.transition(run.run_id, [rc.RunStatus.NOT_STARTED], rc.RunStatus.STARTING)
        attempt = storage.get_run(run.run_id).attempt_id  # type: ignore[union-attr]
        record = WorkerRecord(
            run_id=run.run_id, attempt_id=attempt or "", kind="process", host="h", handle={"pid": 7}
        )
        storage.lose = 1
        assert storage.record_worker(record, replace=False) is True  # not "held by another"
        recorded = storage.get_worker_record(run.run_id)
        assert recorded is not None and recorded.handle == {"pid": 7}
        assert storage.count_runs() == 1


def test_a_write_that_can_neither_be_repeated_nor_checked_is_reported(
    pg_schema: str,  # noqa: F811
) -> None:
    with _LostAck(URL, schema=pg_schema) as storage:
        storage.lose = 1
        with pytest.raises(StorageError, match="may or may not have been stored"):
            storage._write(lambda conn: conn.execute("SELECT 1"))


# --- notifications ------------------------------------------------------------------------------


def test_a_queued_run_wakes_a_daemon_long_before_its_poll_interval(
    pg_schema: str,  # noqa: F811
) -> None:
    """LISTEN/NOTIFY: a run queued by another process starts at once, although the daemon's
    dequeue duty polls only every 30 s."""
    with (
        rc.Instance.from_config(_config(pg_schema)) as daemon_side,
        rc.Instance.from_config(_config(pg_schema)) as submitter,
    ):
        launcher = daemon_side.run_launcher
        assert isinstance(launcher, RecordingLauncher)
        with rc.Daemon(daemon_side, dequeue_interval=30.0):
            time.sleep(0.5)  # the first pass has run; the next poll is 30 s away
            run = submitter.submit_run(simple, tags={"team": "a"})
            deadline = time.monotonic() + 10
            while run.run_id not in launcher.launched_ids and time.monotonic() < deadline:
                time.sleep(0.02)
            assert run.run_id in launcher.launched_ids
            assert time.monotonic() < deadline - 5, "woken by the notification, not the poll"


def test_wait_for_run_is_woken_by_the_end_of_a_run_in_another_process(
    pg_schema: str,  # noqa: F811
) -> None:
    with (
        rc.Instance.from_config(_config(pg_schema)) as waiter,
        rc.Instance.from_config(_config(pg_schema)) as other,
    ):
        run = other.submit_run(simple, tags={"team": "a"})
        ended_at: list[float] = []

        def finish_later() -> None:
            time.sleep(3.2)  # by now the waiter's poll interval has grown to a second
            other.storage.transition(run.run_id, [rc.RunStatus.QUEUED], rc.RunStatus.CANCELED)
            ended_at.append(time.monotonic())

        thread = threading.Thread(target=finish_later)
        thread.start()
        done = waiter.wait_for_run(run.run_id, timeout=30)
        returned_at = time.monotonic()
        thread.join()
    assert done.status is rc.RunStatus.CANCELED
    assert returned_at - ended_at[0] < 0.5
