"""SQLite storage on real files, shared by real processes.

The storage contract itself is checked in ``test_storage_contract.py``; this module covers
what only a file brings: other processes, files that are not ours, paths that cannot work.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runcore.errors import SchemaVersionError, StorageError
from runcore.events import Event, EventType
from runcore.runs import Run, RunsFilter, RunStatus
from runcore.storage import SqliteStorage
from runcore.storage.sqlite import SCHEMA_VERSION


def rid(name: str) -> str:
    """A stable run id (run ids are UUIDs) for a name."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, name))


PROCESS_TIMEOUT = 60.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def storage(db_path: Path) -> Iterator[SqliteStorage]:
    with SqliteStorage(db_path) as storage:
        yield storage


def _python(code: str, *args: str, wait_for_go: bool = False) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with this interpreter; stdout is piped.

    With ``wait_for_go`` the child first waits until the file named by its second argument
    exists, so that children started one after another then really run at the same time.
    """
    source = textwrap.dedent(code)
    if wait_for_go:
        source = _WAIT_FOR_GO + source
    return subprocess.Popen(
        [sys.executable, "-c", source, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _output(proc: subprocess.Popen[str]) -> str:
    """Wait for ``proc``; fail the test with its stderr if it failed."""
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"child process did not finish in {PROCESS_TIMEOUT} s")
    assert proc.returncode == 0, f"child process failed:\n{err}"
    return out


_WAIT_FOR_GO = textwrap.dedent(
    """
    import os, sys, time
    go = sys.argv[2]
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("the go file never appeared")
        time.sleep(0.001)
    """
)


def _snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of every file in ``path``'s directory (to prove nothing was written)."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir())}


# --- sharing with other processes ---------------------------------------------------------


def test_another_process_sees_the_same_runs_and_events(
    storage: SqliteStorage, db_path: Path
) -> None:
    runs = [Run(job_name="etl", status=RunStatus.QUEUED, tags={"team": f"t{i}"}) for i in range(3)]
    storage.add_runs(runs)
    storage.transition(runs[0].run_id, [RunStatus.QUEUED], RunStatus.STARTING)
    storage.store_event(Event(run_id=runs[0].run_id, event_type=EventType.LOG, message="hi"))

    child = _python(
        """
        import json, sys
        from runcore.events import Event, EventType
        from runcore.runs import Run, RunStatus
        from runcore.storage import SqliteStorage

        with SqliteStorage(sys.argv[1]) as storage:
            records = storage.get_run_records(ascending=True)
            first = records[0].run.run_id
            events = storage.get_event_records(first)
            storage.add_run(Run(run_id=sys.argv[2], job_name="child", tags={"by": "child"}))
            storage.store_event(Event(run_id=first, event_type=EventType.LOG, message="child"))
            print(json.dumps({
                "runs": [[r.run.run_id, r.run.status.value, r.run.tags] for r in records],
                "events": [[e.event.event_type.value, e.event.message] for e in events],
            }))
        """,
        str(db_path),
        rid("from-child"),
    )
    seen = json.loads(_output(child))
    assert seen["runs"] == [
        [runs[0].run_id, "STARTING", {"team": "t0"}],
        [runs[1].run_id, "QUEUED", {"team": "t1"}],
        [runs[2].run_id, "QUEUED", {"team": "t2"}],
    ]
    assert seen["events"] == [["RUN_STARTING", ""], ["LOG", "hi"]]
    # ... and this process sees what the child wrote, through its already-open connections.
    child_run = storage.get_run(rid("from-child"))
    assert child_run is not None and child_run.tags == {"by": "child"}
    assert [r.event.message for r in storage.get_event_records(runs[0].run_id)] == [
        "",
        "hi",
        "child",
    ]


def test_reopening_the_file_later_finds_everything(db_path: Path) -> None:
    run = Run(job_name="etl", status=RunStatus.QUEUED, tags={"team": "a"})
    with SqliteStorage(db_path) as first:
        first.add_run(run)
        first.store_events([Event(run_id=run.run_id, event_type=EventType.LOG)] * 3)
        first.set_pool_limit("db", 4)
    with SqliteStorage(db_path) as second:
        assert second.get_run(run.run_id) == run
        assert len(second.get_event_records(run.run_id)) == 3
        assert second.get_pool_limits() == {"db": 4}


def test_processes_racing_to_create_the_database(tmp_path: Path) -> None:
    path = tmp_path / "new" / "runs.db"
    go = tmp_path / "go"
    children = [
        _python(
            """
            from runcore.runs import Run
            from runcore.storage import SqliteStorage
            with SqliteStorage(sys.argv[1]) as storage:
                storage.add_run(Run(job_name="racer"))
            print("ok")
            """,
            str(path),
            str(go),
            wait_for_go=True,
        )
        for _ in range(6)
    ]
    go.touch()
    assert [_output(child).strip() for child in children] == ["ok"] * 6
    with SqliteStorage(path) as storage:
        assert storage.count_runs(RunsFilter(job_name="racer")) == 6


def test_eight_writer_processes_lose_no_event(storage: SqliteStorage, db_path: Path) -> None:
    writers, single, batches, batch_size = 8, 200, 10, 20
    go = db_path.parent / "go"
    children = [
        _python(
            """
            import json
            from runcore.events import Event, EventType
            from runcore.storage import SqliteStorage
            me = sys.argv[3]
            single, batches, batch_size = (int(x) for x in sys.argv[4:7])
            errors = []
            with SqliteStorage(sys.argv[1]) as storage:
                for i in range(single):
                    try:
                        storage.store_event(
                            Event(run_id="shared", event_type=EventType.LOG, message=f"{me}:{i}")
                        )
                    except Exception as exc:
                        errors.append(repr(exc))
                for b in range(batches):
                    events = [
                        Event(run_id="shared", event_type=EventType.LOG, message=f"{me}:b{b}.{j}")
                        for j in range(batch_size)
                    ]
                    try:
                        storage.store_events(events)
                    except Exception as exc:
                        errors.append(repr(exc))
            print(json.dumps(errors))
            """,
            str(db_path),
            str(go),
            f"w{w}",
            str(single),
            str(batches),
            str(batch_size),
            wait_for_go=True,
        )
        for w in range(writers)
    ]
    go.touch()
    errors = [json.loads(_output(child)) for child in children]
    assert errors == [[]] * writers
    records = storage.get_event_records("shared")
    per_writer = single + batches * batch_size
    assert len(records) == writers * per_writer
    ids = [r.storage_id for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for w in range(writers):
        mine = [r.event.message for r in records if r.event.message.startswith(f"w{w}:")]
        expected = [f"w{w}:{i}" for i in range(single)] + [
            f"w{w}:b{b}.{j}" for b in range(batches) for j in range(batch_size)
        ]
        assert mine == expected, "each writer's events are stored once, in its order"


def test_a_reader_tailing_the_cursor_misses_no_event_of_writer_processes(
    storage: SqliteStorage, db_path: Path
) -> None:
    """The cross-run cursor is gap-free across processes: a reader tailing it while four
    processes write (single events and batches, each to its own run) sees every event once."""
    writers, single = 4, 150
    go = db_path.parent / "go"
    children = [
        _python(
            """
            from runcore.events import Event, EventType
            from runcore.storage import SqliteStorage
            me, single = sys.argv[3], int(sys.argv[4])
            with SqliteStorage(sys.argv[1]) as storage:
                for i in range(single):
                    storage.store_event(Event(run_id=me, event_type=EventType.LOG))
                    if i % 10 == 0:
                        storage.store_events([Event(run_id=me, event_type=EventType.LOG)] * 5)
            """,
            str(db_path),
            str(go),
            f"w{w}",
            str(single),
            wait_for_go=True,
        )
        for w in range(writers)
    ]
    seen: list[int] = []
    cursor: int | None = None
    go.touch()
    while any(child.poll() is None for child in children):
        while records := storage.get_events_after(cursor, 50):
            seen.extend(r.storage_id for r in records)
            cursor = records[-1].storage_id
    for child in children:
        _output(child)
    seen.extend(r.storage_id for r in storage.get_events_after(cursor, 100_000))
    stored = [r.storage_id for r in storage.get_events_after(None, 100_000)]
    assert len(stored) == writers * (single + single // 10 * 5)
    assert seen == stored, "the tailing reader skipped or repeated an event"


def test_two_processes_racing_transitions_win_each_run_once(
    storage: SqliteStorage, db_path: Path
) -> None:
    runs = [Run(job_name="etl", status=RunStatus.QUEUED) for _ in range(200)]
    storage.add_runs(runs)
    go = db_path.parent / "go"
    code = """
        import json, random
        from runcore.runs import RunStatus
        from runcore.storage import SqliteStorage
        with SqliteStorage(sys.argv[1]) as storage:
            ids = [r.run.run_id for r in storage.get_run_records(ascending=True)]
            if sys.argv[3] == "shuffled":
                random.Random(7).shuffle(ids)
            won = [
                run_id for run_id in ids
                if storage.transition(run_id, [RunStatus.QUEUED], RunStatus.STARTING) is not None
            ]
        print(json.dumps(won))
        """
    children = [
        _python(code, str(db_path), str(go), order, wait_for_go=True)
        for order in ("in-order", "shuffled")
    ]
    go.touch()
    won_a, won_b = (set(json.loads(_output(child))) for child in children)
    assert not won_a & won_b, "a run was won by both processes"
    assert won_a | won_b == {run.run_id for run in runs}
    assert storage.count_runs(RunsFilter(statuses=[RunStatus.STARTING])) == 200
    for run in runs:
        events = storage.get_event_records(run.run_id)
        assert [r.event.event_type for r in events] == [EventType.RUN_STARTING]


def _write_from_forked_child(storage: SqliteStorage, run_id: str) -> None:
    storage.add_run(Run(run_id=run_id, job_name="forked"))
    storage.store_event(Event(run_id=run_id, event_type=EventType.LOG, message="from child"))
    storage.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the Linux default start method")
def test_a_forked_child_uses_its_own_connections(storage: SqliteStorage) -> None:
    storage.add_run(Run(run_id=rid("parent-before"), job_name="parent"))
    child = multiprocessing.get_context("fork").Process(
        target=_write_from_forked_child, args=(storage, rid("child"))
    )
    child.start()
    child.join(timeout=PROCESS_TIMEOUT)
    assert child.exitcode == 0
    # The parent's pooled connections survived the child (and its close()).
    storage.add_run(Run(run_id=rid("parent-after"), job_name="parent"))
    assert {r.run.run_id for r in storage.get_run_records()} == {
        rid("parent-before"),
        rid("child"),
        rid("parent-after"),
    }
    assert [r.event.message for r in storage.get_event_records(rid("child"))] == ["from child"]


# --- files that are not ours --------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(random.Random(1).randbytes(8192), id="random-bytes"),
        pytest.param(random.Random(2).randbytes(100), id="short-random-bytes"),
        pytest.param(b'{"storage": {"sqlite": {}}}\n' * 50, id="text"),
    ],
)
def test_a_file_that_is_not_a_database_is_refused_and_left_unchanged(
    db_path: Path, content: bytes
) -> None:
    db_path.write_bytes(content)
    before = _snapshot(db_path)
    storage = SqliteStorage(db_path)
    with pytest.raises(SchemaVersionError, match="not a runcore database") as info:
        storage.start()
    assert str(db_path) in str(info.value)
    assert _snapshot(db_path) == before, "the file was changed (or a -wal/-shm file created)"


def test_an_sqlite_database_of_another_application_is_refused_and_untouched(
    db_path: Path,
) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, total REAL)")
    conn.execute("INSERT INTO users (name) VALUES ('ann')")
    conn.commit()
    conn.close()
    before = _snapshot(db_path)
    with pytest.raises(SchemaVersionError, match="not a runcore one") as info:
        SqliteStorage(db_path).start()
    message = str(info.value)
    assert "users" in message and "orders" in message and str(db_path) in message
    assert _snapshot(db_path) == before, "the foreign database was modified"
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def _set_meta(path: Path, key: str, value: str | None) -> None:
    conn = sqlite3.connect(path)
    if value is None:
        conn.execute("DELETE FROM runcore_meta WHERE key = ?", (key,))
    else:
        conn.execute("UPDATE runcore_meta SET value = ? WHERE key = ?", (value, key))
    conn.commit()
    conn.close()


def test_a_database_from_a_newer_runcore_is_refused(db_path: Path) -> None:
    with SqliteStorage(db_path) as storage:
        storage.add_run(Run(job_name="etl"))
    _set_meta(db_path, "schema_version", "99")
    with pytest.raises(SchemaVersionError, match="newer runcore") as info:
        SqliteStorage(db_path).start()
    assert "99" in str(info.value) and str(db_path) in str(info.value)
    conn = sqlite3.connect(db_path)
    meta = dict(conn.execute("SELECT key, value FROM runcore_meta").fetchall())
    assert meta["schema_version"] == "99"
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    conn.close()


@pytest.mark.parametrize(("key", "value"), [("app", "something-else"), ("app", None)])
def test_a_runcore_meta_table_not_written_by_runcore_is_refused(
    db_path: Path, key: str, value: str | None
) -> None:
    SqliteStorage(db_path).start()
    _set_meta(db_path, key, value)
    with pytest.raises(SchemaVersionError, match="not written by runcore"):
        SqliteStorage(db_path).start()


def test_an_older_schema_version_is_refused(db_path: Path) -> None:
    SqliteStorage(db_path).start()
    _set_meta(db_path, "schema_version", "0")
    with pytest.raises(SchemaVersionError, match="cannot read or migrate"):
        SqliteStorage(db_path).start()


def _make_version_1(db_path: Path) -> str:
    """A version-1 database (as runcore 0.x wrote it) holding one run with worker tags."""
    with SqliteStorage(db_path) as storage:
        run = storage.add_run(
            Run(
                job_name="etl",
                status=RunStatus.STARTED,
                tags={
                    "team": "a",
                    "runcore/worker_pid": "-1",
                    "runcore/worker_host": "elsewhere",
                    "runcore/worker_kind": "process",
                },
            )
        )
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE workers")
    conn.execute("UPDATE runcore_meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    return run.run_id


def test_an_older_schema_is_refused_untouched_naming_the_migrate_command(db_path: Path) -> None:
    _make_version_1(db_path)
    before = db_path.read_bytes()
    with pytest.raises(SchemaVersionError, match="runcore instance migrate"):
        SqliteStorage(db_path).start()
    assert db_path.read_bytes() == before


@pytest.mark.parametrize("how", ["migrate", "auto_migrate"])
def test_migration_to_version_2_deletes_the_worker_tags_and_copies_nothing(
    db_path: Path, how: str
) -> None:
    run_id = _make_version_1(db_path)
    if how == "migrate":
        assert SqliteStorage(db_path).migrate() == (1, SCHEMA_VERSION)
        assert SqliteStorage(db_path).migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        storage = SqliteStorage(db_path)
    else:
        storage = SqliteStorage(db_path, auto_migrate=True)
    with storage:
        run = storage.get_run(run_id)
        assert run is not None and run.tags == {"team": "a"}
        assert storage.get_worker_record(run_id) is None
        assert storage.get_run_ids(RunsFilter(tags={"runcore/worker_pid": "-1"})) == []
        assert storage.get_run_ids(RunsFilter(tags={"team": "a"})) == [run_id]
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM run_tags WHERE key LIKE 'runcore/%'").fetchone() == (
        0,
    )
    conn.close()


# --- paths that cannot work ---------------------------------------------------------------


def test_a_path_under_a_regular_file_gives_a_storage_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("I am a file")
    path = blocker / "runs.db"
    storage = SqliteStorage(path)
    with pytest.raises(StorageError) as info:
        storage.start()
    assert str(path) in str(info.value)
    assert "storage.sqlite.path" in str(info.value)
    assert blocker.read_text() == "I am a file"


def test_a_path_that_is_a_directory_gives_a_storage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is a directory") as info:
        SqliteStorage(tmp_path).start()
    assert str(tmp_path) in str(info.value)


def test_the_first_call_starts_the_storage(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    assert not db_path.exists(), "the constructor does no I/O"
    try:
        storage.add_run(Run(run_id=rid("lazy"), job_name="etl"))
        assert storage.get_run(rid("lazy")) is not None
    finally:
        storage.close()


# --- how the file is kept -----------------------------------------------------------------


def test_wal_mode_is_on(storage: SqliteStorage, db_path: Path) -> None:
    storage.add_run(Run(job_name="etl"))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert (db_path.parent / (db_path.name + "-wal")).exists()


def _db_fds(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_many_short_lived_threads_do_not_leak_connections(
    storage: SqliteStorage, db_path: Path
) -> None:
    def touch(i: int) -> None:
        storage.store_event(Event(run_id="r", event_type=EventType.LOG, message=str(i)))

    for i in range(60):
        thread = threading.Thread(target=touch, args=(i,))
        thread.start()
        thread.join(timeout=PROCESS_TIMEOUT)
    assert len(storage.get_event_records("r")) == 60
    assert _db_fds(db_path) <= 2, "one pooled connection serves threads that come and go"
    storage.close()
    assert _db_fds(db_path) == 0, "close() closes the pooled connections"


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_lock_held_past_the_busy_timeout_is_retried(db_path: Path) -> None:
    with SqliteStorage(db_path, busy_timeout=0.05) as storage:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db_path, 0.3, locked))
        holder.start()
        assert locked.wait(timeout=PROCESS_TIMEOUT)
        storage.add_run(Run(run_id=rid("patient"), job_name="etl"))
        holder.join(timeout=PROCESS_TIMEOUT)
        assert storage.get_run(rid("patient")) is not None


def test_a_lock_that_never_goes_away_surfaces_as_a_storage_error(db_path: Path) -> None:
    with SqliteStorage(db_path, busy_timeout=0.02) as storage:
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(StorageError, match="stayed locked") as info:
                storage.add_run(Run(job_name="etl"))
            assert time.monotonic() - started < 15
            assert str(db_path) in str(info.value)
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        storage.add_run(Run(run_id=rid("after"), job_name="etl"))
        assert storage.get_run(rid("after")) is not None
