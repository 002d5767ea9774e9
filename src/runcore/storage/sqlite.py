"""SQLite storage: the embedded default. One file, many threads and processes.

* WAL journal, ``synchronous=NORMAL`` (durable across process crashes; a power loss may drop
  the last commits), and a busy timeout so concurrent writers wait instead of failing.
* A small pool of connections per process: a call borrows one and gives it back, so the
  number of open connections follows the number of concurrent calls, not the number of
  threads that ever touched the storage. A forked child never uses its parent's connections.
* Every write is one ``BEGIN IMMEDIATE`` transaction, so a writer takes the lock up front and
  the busy handler, not an error, resolves contention. Values are serialized before the
  transaction begins, to keep the lock short. A lock that outlasts the busy timeout is retried
  a few more times (:mod:`runcore._retry`) before it surfaces as :class:`StorageError`.
* A ``runcore_meta`` table holds the schema version. A newer schema, or a file that is not a
  runcore database, is refused with a clear message and left untouched: nothing is written
  (not even the switch to WAL) before the file is known to be ours. An older schema is
  upgraded by :meth:`SqliteStorage.migrate` (``runcore instance migrate``), or on open with
  ``auto_migrate``; without either it is refused with an error naming the command.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, TypeVar

import attrs

from runcore import _serde, _validate
from runcore._retry import retry_sqlite_locked
from runcore.errors import (
    DuplicateRunError,
    InstanceClosedError,
    RunNotFoundError,
    SchemaVersionError,
    StorageError,
)
from runcore.events import Event, EventRecord, EventType
from runcore.runs import (
    Run,
    RunRecord,
    RunsFilter,
    RunStatus,
    check_transition,
)
from runcore.storage.base import (
    WAITER_TTL,
    DaemonHeartbeat,
    InstanceStorage,
    QueuedRunRow,
    QueueReader,
    SlotLease,
    WorkerRecord,
    apply_transition,
    attempt_allows,
    now,
    queued_row_ok,
    read_run,
    status_event,
    worker_record_from_row,
    writable,
)

#: 1: the first release. 2: worker records in their own table (``workers``); the
#: ``runcore/worker_*`` tags of version 1 are deleted, never read again.
SCHEMA_VERSION = 2
APP_ID = "runcore"

T = TypeVar("T")

#: Per-connection settings. ``synchronous=NORMAL`` is the durability promise (see the module
#: docstring); the rest only trade memory for speed: an 8 MiB page cache, temporary sort
#: tables in memory, and a WAL that is checkpointed every 4,000 pages (8 MiB with 2 KiB pages)
#: instead of 1,000, which makes the fsync of a checkpoint four times rarer.
_PRAGMAS = (
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-8192",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA wal_autocheckpoint=4000",
)

#: Version 2's table: who executes each run's current attempt (see ``WorkerRecord``).
_WORKERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT PRIMARY KEY,
    attempt_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    handle TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL
) WITHOUT ROWID;
"""

# ``storage_id`` must increase in insertion order even after deletes, hence AUTOINCREMENT on
# ``runs`` and ``events`` (a plain rowid table may hand out a deleted id again).
# ``run_tags`` is keyed by (key, value, run) for tag queries; a run's tag rows are found from
# the tags in its body, so no second index on ``run_pk`` is needed.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runcore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    job_name TEXT NOT NULL,
    status TEXT NOT NULL,
    parent_run_id TEXT,
    root_run_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);
CREATE INDEX IF NOT EXISTS runs_by_status_updated ON runs (status, updated_at);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_name, id);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_root ON runs (root_run_id) WHERE root_run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS run_tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    run_pk INTEGER NOT NULL,
    PRIMARY KEY (key, value, run_pk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    step_key TEXT,
    timestamp REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, id);
CREATE TABLE IF NOT EXISTS pool_limits (pool TEXT PRIMARY KEY, slot_limit INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pool_slots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL DEFAULT '',
    claimed_at REAL NOT NULL,
    UNIQUE (pool, run_id, step_key)
);
CREATE INDEX IF NOT EXISTS pool_slots_by_run ON pool_slots (run_id);
CREATE TABLE IF NOT EXISTS pool_waiters (
    pool TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_order REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (pool, run_id, step_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pool_waiters_by_run ON pool_waiters (run_id);
CREATE TABLE IF NOT EXISTS daemon_heartbeats (
    daemon_id TEXT PRIMARY KEY,
    daemon_type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    info TEXT NOT NULL
);
"""
_SCHEMA += _WORKERS_SCHEMA

#: The tags version 1 kept a run's worker in: user-writable, so never to be read again.
_V1_WORKER_TAGS = ("runcore/worker_pid", "runcore/worker_host", "runcore/worker_kind")


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Add the ``workers`` table; delete the version-1 worker tags, copying nothing."""
    conn.execute(_WORKERS_SCHEMA)
    marks = ",".join("?" * len(_V1_WORKER_TAGS))
    conn.execute(f"DELETE FROM run_tags WHERE key IN ({marks})", _V1_WORKER_TAGS)
    paths = [f'$.tags."{key}"' for key in _V1_WORKER_TAGS]
    found = " OR ".join(f"json_type(body, '{path}') IS NOT NULL" for path in paths)
    removes = ", ".join(f"'{path}'" for path in paths)
    conn.execute(
        f"UPDATE runs SET body = json_remove(body, {removes}) WHERE json_valid(body) AND ({found})"
    )


#: Upgrades by the version they start from; each moves the schema up by one, in one transaction.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}

_INSERT_RUN = (
    "INSERT INTO runs (run_id, job_name, status, parent_run_id, root_run_id, created_at,"
    " updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TAG = "INSERT INTO run_tags (key, value, run_pk) VALUES (?, ?, ?)"
_DELETE_TAG = "DELETE FROM run_tags WHERE key = ? AND value = ? AND run_pk = ?"
_DELETE_WAITER = "DELETE FROM pool_waiters WHERE pool = ? AND run_id = ? AND step_key = ?"
_INSERT_EVENT = (
    "INSERT INTO events (run_id, event_type, step_key, timestamp, body) VALUES (?, ?, ?, ?, ?)"
)

#: Page size of a new database file (SQLite's default is 4096). Measured on ext4: one-row
#: commits (``add_run``, ``store_event``) are about 30% faster at 2048 while reads are no slower.
_PAGE_SIZE = 2048

#: Idle connections kept per process; more concurrent calls open more, closed on return.
_MAX_IDLE = 16


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


def _run_row(run: Run) -> tuple[Any, ...]:
    return (
        run.run_id,
        run.job_name,
        run.status.value,
        run.parent_run_id,
        run.root_run_id,
        run.created_at,
        run.updated_at,
        _serde.dumps_run(run),
    )


def _event_row(event: Event) -> tuple[Any, ...]:
    return (
        event.run_id,
        event.event_type.value,
        event.step_key,
        event.timestamp,
        _serde.dumps_event(event),
    )


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in one IMMEDIATE transaction: committed on success, rolled back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


class SqliteStorage(InstanceStorage, QueueReader):
    """Runs, events, pools and heartbeats in one SQLite file at ``path``.

    ``busy_timeout`` (seconds) is how long a call waits for another writer's lock before the
    retries of :mod:`runcore._retry` start. ``auto_migrate`` upgrades an older schema on open
    (else that is an error naming ``runcore instance migrate``).

    Threads: none of its own. Any thread may call any method; each call borrows a connection
    from a per-process pool. :meth:`close` closes the idle connections at once and the
    borrowed ones as they are given back; later calls raise
    :class:`~runcore.errors.InstanceClosedError`.
    """

    shareable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        auto_migrate: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = _validate.duration("SqliteStorage(busy_timeout=...)", busy_timeout)
        self.auto_migrate = auto_migrate
        self._idle: deque[sqlite3.Connection] = deque()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._pid = os.getpid()
        # Connections inherited through fork: never used, and never closed (closing them in
        # the child could disturb the parent's locks), just kept referenced.
        self._inherited: list[sqlite3.Connection] = []
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r})"

    def to_config(self) -> dict[str, Any]:
        return {"sqlite": {"path": os.path.abspath(self.path)}}

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._start_lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new SqliteStorage")
            if self._started:
                return
            self._check_location()
            conn = self._connect()
            try:
                retry_sqlite_locked(lambda: self._prepare(conn), _is_locked)
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
            self._idle.append(conn)
            self._identity = self._file_identity()
            self._started = True

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check_identity(self) -> None:
        """Raise :class:`StorageError` if the database file was deleted, replaced or became
        unreadable since :meth:`start`: a process that goes on would write to an unlinked
        file no one else sees."""
        if self._identity is None or self._closed:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StorageError(
                f"the SQLite database {self.path!r} was deleted while this process used it; "
                "stopping rather than going on against the unlinked file. Restore it, or "
                "start again against a new database"
            ) from None
        except OSError as exc:
            raise StorageError(
                f"the SQLite database {self.path!r} cannot be checked any more ({exc}); stopping"
            ) from exc
        if (st.st_dev, st.st_ino) != self._identity:
            raise StorageError(
                f"the SQLite database {self.path!r} was replaced by another file while this "
                "process used it; stopping rather than mixing two databases. Start again to "
                "use the new file"
            )
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise StorageError(
                f"the SQLite database {self.path!r} is no longer readable and writable by this "
                "process; stopping. Fix its permissions and start again"
            )

    def close(self) -> None:
        self._closed = True
        if self._pid != os.getpid():
            return  # connections inherited through fork belong to the parent
        self._drain_idle()

    def _check_location(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot use {self.path!r} as the SQLite database: its directory {directory!r} "
                f"cannot be created ({exc}); set storage.sqlite.path to a file in a writable "
                "directory"
            ) from exc
        if os.path.isdir(self.path):
            raise StorageError(
                f"the SQLite database path {self.path!r} is a directory; give a file path, "
                "e.g. storage.sqlite.path: .runcore/runs.db"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that the file is ours (or empty) before writing anything; then create it."""
        tables = self._tables(conn)
        version = self._check_meta(conn, tables) if tables else SCHEMA_VERSION
        if version < SCHEMA_VERSION and not self.auto_migrate:
            raise SchemaVersionError(
                f"{self.path!r} has an older runcore schema (version {version}; this runcore "
                f"uses {SCHEMA_VERSION}); it was left "
                "untouched. Upgrade it with `runcore instance migrate` (or Instance.migrate()), "
                "or set storage.sqlite.auto_migrate: true"
            )
        if not tables:
            # Before the first write, while the file is still empty. Small pages make a commit
            # cheaper: it appends whole pages to the WAL, and a run or event dirties several.
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(
                f"cannot switch the SQLite database {self.path!r} to WAL mode (it stays in "
                f"{mode!r} mode); put it on a local filesystem that supports shared memory"
            )
        if tables:
            if version < SCHEMA_VERSION:
                self._upgrade(conn)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = self._tables(conn)  # another process may have created it meanwhile
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO runcore_meta (key, value) VALUES (?, ?), (?, ?)",
                    ("app", APP_ID, "schema_version", str(SCHEMA_VERSION)),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        if tables:
            self._check_meta(conn, tables)

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        return {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }

    def migrate(self) -> tuple[int, int]:
        """Upgrade the file's schema to this runcore's, in place; returns (from, to) versions.

        Each step is one transaction; a file at the current version is left as it is. A newer
        schema or a file that is not a runcore database is refused untouched.
        """
        with self._start_lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new SqliteStorage")
            self._check_location()
            conn = self._connect()
            try:
                tables = self._tables(conn)
                before = self._check_meta(conn, tables) if tables else SCHEMA_VERSION
                if tables:
                    retry_sqlite_locked(lambda: self._upgrade(conn), _is_locked)
                else:
                    retry_sqlite_locked(lambda: self._prepare(conn), _is_locked)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            finally:
                with suppress(sqlite3.Error):
                    conn.close()
        return before, SCHEMA_VERSION

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM runcore_meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0]) if row else 0
        except ValueError:
            return 0

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations from the file's version up to ours, one transaction each."""
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._version(conn)  # read under the lock: another may have migrated
                step = _MIGRATIONS.get(version)
                if version >= SCHEMA_VERSION or step is None:
                    conn.execute("COMMIT")
                    break
                step(conn)
                conn.execute(
                    "UPDATE runcore_meta SET value = ? WHERE key = 'schema_version'",
                    (str(version + 1),),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        if self._version(conn) < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path!r} has schema version {self._version(conn)}, which this runcore "
                f"(schema version {SCHEMA_VERSION}) cannot migrate; point storage.sqlite.path "
                "at a new file"
            )

    def _check_meta(self, conn: sqlite3.Connection, tables: set[str]) -> int:
        """The file's schema version, after checking that the file is ours and not newer."""
        if "runcore_meta" not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise SchemaVersionError(
                f"{self.path!r} is an SQLite database but not a runcore one (it has the tables "
                f"{shown}); it was left untouched. Point storage.sqlite.path at a new file"
            )
        meta = dict(conn.execute("SELECT key, value FROM runcore_meta").fetchall())
        if meta.get("app") != APP_ID:
            raise SchemaVersionError(
                f"{self.path!r} has a runcore_meta table but was not written by runcore; it was "
                "left untouched. Point storage.sqlite.path at a new file"
            )
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            version = 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path!r} was written by a newer runcore (schema version {version}; this "
                f"runcore reads up to {SCHEMA_VERSION}). Upgrade runcore, or point "
                "storage.sqlite.path at another database file"
            )
        if version < SCHEMA_VERSION and version not in _MIGRATIONS:
            raise SchemaVersionError(
                f"{self.path!r} has schema version {meta.get('schema_version')!r}, which this "
                f"runcore (schema version {SCHEMA_VERSION}) cannot read or migrate; point "
                "storage.sqlite.path at a new file"
            )
        return version

    # --- connections ------------------------------------------------------------------------

    def _acquire(self) -> sqlite3.Connection:
        if self._closed:
            raise InstanceClosedError(f"{self!r} is closed; create a new SqliteStorage")
        if self._pid != os.getpid():
            self._after_fork()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if not self._started:
            self.start()
            with suppress(IndexError):
                return self._idle.pop()
        return self._connect()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if self._closed or len(self._idle) >= _MAX_IDLE:
            with suppress(sqlite3.Error):
                conn.close()
            return
        self._idle.append(conn)
        self._drain_if_closed()  # close() may have run between the check and the append

    def _drain_if_closed(self) -> None:
        if self._closed:
            self._drain_idle()

    def _drain_idle(self) -> None:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            with suppress(sqlite3.Error):
                conn.close()

    def _after_fork(self) -> None:
        """In a forked child: set the parent's connections aside and start a fresh pool."""
        self._start_lock = threading.Lock()
        self._inherited.extend(self._idle)
        self._idle = deque()
        self._pid = os.getpid()

    def _error(self, exc: sqlite3.Error) -> Exception:
        """``exc`` translated into runcore's error tree, naming the database."""
        text = str(exc)
        if self._closed and isinstance(exc, sqlite3.ProgrammingError):
            return InstanceClosedError(f"{self!r} is closed; create a new SqliteStorage")
        if "not a database" in text or "malformed" in text or "encrypted" in text:
            return SchemaVersionError(
                f"{self.path!r} is not a runcore database (SQLite says: {text}); it was left "
                "untouched. Point storage.sqlite.path at a new file or a runcore database"
            )
        if _is_locked(exc):
            return StorageError(
                f"the SQLite database {self.path!r} stayed locked by another writer for longer "
                f"than the busy timeout ({self.busy_timeout:g} s) and the retries after it "
                f"(SQLite says: {text}); look for a process holding a long transaction on it, "
                "or raise busy_timeout"
            )
        if "unable to open" in text or "readonly" in text or "read-only" in text:
            return StorageError(
                f"cannot open the SQLite database {self.path!r} for writing (SQLite says: "
                f"{text}); check that the path exists and is writable, or set "
                "storage.sqlite.path elsewhere"
            )
        return StorageError(f"SQLite error on {self.path!r}: {text}")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction, retrying a lock that outlasted the timeout."""
        conn = self._acquire()
        try:
            return retry_sqlite_locked(lambda: _in_transaction(conn, fn), _is_locked)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._give_back(conn)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._acquire()
        try:
            return retry_sqlite_locked(lambda: conn.execute(sql, params).fetchall(), _is_locked)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._give_back(conn)

    # --- runs -------------------------------------------------------------------------------

    @staticmethod
    def _insert_runs(
        conn: sqlite3.Connection, runs: Sequence[Run], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        for run, row in zip(runs, rows, strict=True):
            try:
                cur = conn.execute(_INSERT_RUN, row)
            except sqlite3.IntegrityError as exc:
                raise DuplicateRunError(run.run_id) from exc
            if run.tags:
                pk = cur.lastrowid
                conn.executemany(_INSERT_TAG, [(k, v, pk) for k, v in run.tags.items()])

    def add_run(self, run: Run) -> Run:
        rows = [_run_row(run)]
        self._write(lambda conn: self._insert_runs(conn, [run], rows))
        return run

    def add_runs(self, runs: Sequence[Run]) -> None:
        if not runs:
            return
        rows = [_run_row(run) for run in runs]
        self._write(lambda conn: self._insert_runs(conn, runs, rows))

    def get_queued_run_rows(self, run_ids: Sequence[str] | None = None) -> list[QueuedRunRow]:
        # SQLite extracts the few fields and packs every row into one JSON array, which Python
        # then parses in one call: several times faster than a JSON parse per row.
        # A row whose JSON does not parse is left out (a corrupt run is skipped by the duties);
        # json_extract would fail the whole query on it.
        inner = "SELECT id, run_id, body FROM runs WHERE status = 'QUEUED' AND json_valid(body)"
        params: list[Any] = []
        if run_ids is not None:
            if not run_ids:
                return []
            inner += f" AND run_id IN ({','.join('?' * len(run_ids))})"
            params.extend(run_ids)
        sql = (
            "SELECT json_group_array(json_array(id, run_id, json_extract(body, '$.tags'), "
            "json_extract(body, '$.pools'), json_extract(body, '$.root_pools'))) "
            f"FROM ({inner} ORDER BY id)"
        )
        (text,) = self._read(sql, params)[0]
        return [
            QueuedRunRow(
                storage_id=row[0],
                run_id=row[1],
                tags=row[2] or {},
                pools=row[3] or [],
                root_pools=row[4],
            )
            for row in json.loads(text or "[]")
            if queued_row_ok(row)
        ]

    def get_run(self, run_id: str) -> Run | None:
        rows = self._read(
            "SELECT body, run_id, status, job_name FROM runs WHERE run_id = ?", (run_id,)
        )
        if not rows:
            return None
        body, stored_id, status, job_name = rows[0]
        return read_run(body, run_id=stored_id, status=status, job_name=job_name)

    @staticmethod
    def _driving_tag(filters: RunsFilter | None) -> tuple[str, str] | None:
        """The tag to walk the runs by, newest first, instead of walking all runs.

        Only for filters on tags (and creation time) alone. There the ``run_tags`` primary key
        (key, value, run_pk) read backwards yields exactly the runs with that tag, in storage
        order, so a listing of a backfill's runs costs what the backfill holds, not what the
        database holds. With a status, job or id filter the run indexes drive instead (a tag
        such as ``team`` may be on most runs, while few are QUEUED).
        """
        if filters is None or not filters.tags:
            return None
        if (
            filters.run_ids is not None
            or filters.job_name is not None
            or filters.statuses is not None
            or filters.parent_run_id is not None
            or filters.root_run_id is not None
        ):
            return None
        for key, want in filters.tags.items():
            if isinstance(want, str):
                return key, want
            values = list(want)
            if len(values) == 1:
                return key, values[0]
        return None

    @staticmethod
    def _where(
        filters: RunsFilter | None, skip_tag: str | None = None
    ) -> tuple[list[str], list[Any]]:
        """SQL conditions on ``runs`` for ``filters`` (except the tag ``skip_tag``)."""
        clauses: list[str] = []
        params: list[Any] = []
        if filters is None:
            return clauses, params

        def one_of(column: str, values: list[Any]) -> None:
            if not values:
                clauses.append("0")
            elif len(values) == 1:
                clauses.append(f"runs.{column} = ?")
                params.append(values[0])
            else:
                clauses.append(f"runs.{column} IN ({','.join('?' * len(values))})")
                params.extend(values)

        if filters.run_ids is not None:
            one_of("run_id", list(filters.run_ids))
        if filters.job_name is not None:
            one_of("job_name", [filters.job_name])
        if filters.statuses is not None:
            one_of("status", [s.value for s in filters.statuses])
        if filters.created_after is not None:
            clauses.append("runs.created_at > ?")
            params.append(filters.created_after)
        if filters.created_before is not None:
            clauses.append("runs.created_at < ?")
            params.append(filters.created_before)
        if filters.updated_after is not None:
            clauses.append("COALESCE(runs.updated_at, runs.created_at) > ?")
            params.append(filters.updated_after)
        if filters.parent_run_id is not None:
            one_of("parent_run_id", [filters.parent_run_id])
        if filters.root_run_id is not None:
            one_of("root_run_id", [filters.root_run_id])
        for key, want in (filters.tags or {}).items():
            if key == skip_tag:
                continue
            values = [want] if isinstance(want, str) else list(want)
            if not values:
                clauses.append("0")
                continue
            # A tag test per run, through the (key, value, run_pk) primary key: cheap while
            # walking runs newest first, which is what a LIMITed listing does.
            marks = ",".join("?" * len(values))
            test = "t.value = ?" if len(values) == 1 else f"t.value IN ({marks})"
            clauses.append(
                f"EXISTS (SELECT 1 FROM run_tags t WHERE t.key = ? AND {test} "
                "AND t.run_pk = runs.id)"
            )
            params.append(key)
            params.extend(values)
        return clauses, params

    def _from_where(
        self, filters: RunsFilter | None, after_storage_id: int | None, ascending: bool
    ) -> tuple[str, str, list[Any]]:
        """``FROM ... WHERE ...`` for ``filters``, the column runs are ordered by, and params."""
        driving = self._driving_tag(filters)
        clauses, params = self._where(filters, driving[0] if driving else None)
        if driving is None:
            source, order = "runs", "runs.id"
        else:
            # CROSS JOIN keeps run_tags as the outer loop, read in primary-key order.
            source, order = "run_tags d CROSS JOIN runs", "d.run_pk"
            clauses[:0] = ["d.key = ?", "d.value = ?", "runs.id = d.run_pk"]
            params[:0] = list(driving)
        if after_storage_id is not None:
            clauses.append(f"{order} > ?" if ascending else f"{order} < ?")
            params.append(after_storage_id)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return f" FROM {source}{where}", order, params

    def _select(
        self,
        columns: str,
        filters: RunsFilter | None,
        limit: int | None,
        ascending: bool,
        after_storage_id: int | None,
    ) -> tuple[str, list[Any]]:
        from_where, order, params = self._from_where(filters, after_storage_id, ascending)
        sql = f"SELECT {columns}{from_where} ORDER BY {order} {'ASC' if ascending else 'DESC'}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return sql, params

    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        sql, params = self._select(
            "runs.id, runs.body, runs.run_id, runs.status, runs.job_name",
            filters,
            limit,
            ascending,
            after_storage_id,
        )
        return [
            RunRecord(row[0], read_run(row[1], run_id=row[2], status=row[3], job_name=row[4]))
            for row in self._read(sql, params)
        ]

    def get_run_ids(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[str]:
        sql, params = self._select("runs.run_id", filters, limit, ascending, after_storage_id)
        return [row[0] for row in self._read(sql, params)]

    def count_runs(self, filters: RunsFilter | None = None) -> int:
        from_where, _, params = self._from_where(filters, None, False)
        return int(self._read(f"SELECT COUNT(*){from_where}", params)[0][0])

    def add_run_tags(self, run_id: str, tags: Mapping[str, str]) -> Run:
        tags = dict(tags)

        def write(conn: sqlite3.Connection) -> Run:
            row = conn.execute(
                "SELECT id, body, status FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            pk, old = row[0], writable(read_run(row[1], run_id=run_id, status=row[2]))
            run = attrs.evolve(old, tags={**old.tags, **tags})
            conn.execute("UPDATE runs SET body = ? WHERE id = ?", (_serde.dumps_run(run), pk))
            conn.executemany(_DELETE_TAG, [(k, old.tags[k], pk) for k in tags if k in old.tags])
            conn.executemany(_INSERT_TAG, [(k, v, pk) for k, v in tags.items()])
            return run

        return self._write(write)

    def transition(
        self,
        run_id: str,
        from_statuses: Sequence[RunStatus],
        to_status: RunStatus,
        *,
        event: Event | None = None,
        failure_reason: str | None = None,
        claim_slots: Sequence[tuple[str, int]] = (),
        attempt_id: str | None = None,
    ) -> Run | None:
        check_transition(from_statuses, to_status)
        allowed = {s.value for s in from_statuses}

        def write(conn: sqlite3.Connection) -> Run | None:
            row = conn.execute(
                "SELECT id, status, body FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            if row[1] not in allowed:
                return None
            old = writable(read_run(row[2], run_id=run_id, status=row[1]))
            if not attempt_allows(old, to_status, attempt_id):
                return None
            # Check every pool before taking any slot: all or nothing (no other writer can
            # come in between, the transaction holds the write lock).
            if not all(self._slot_free(conn, pool, run_id, "", n) for pool, n in claim_slots):
                return None
            for pool, limit in claim_slots:
                self._claim(conn, pool, run_id, "", limit)
            ts = now()
            run = apply_transition(old, to_status, ts, failure_reason, event, attempt_id=attempt_id)
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, body = ? WHERE id = ?",
                (to_status.value, ts, _serde.dumps_run(run), row[0]),
            )
            conn.execute(_INSERT_EVENT, _event_row(status_event(run, to_status, event, ts)))
            if to_status.is_terminal or to_status is RunStatus.QUEUED:
                conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM pool_waiters WHERE run_id = ?", (run_id,))
            return run

        return self._write(write)

    def delete_run(self, run_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id, body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                pk, run = row[0], read_run(row[1], run_id=run_id)
                if run.corrupt is None:
                    conn.executemany(_DELETE_TAG, [(k, v, pk) for k, v in run.tags.items()])
                else:  # its tags cannot be read from its body: find their rows the slow way
                    conn.execute("DELETE FROM run_tags WHERE run_pk = ?", (pk,))
                conn.execute("DELETE FROM runs WHERE id = ?", (pk,))
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM workers WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM pool_waiters WHERE run_id = ?", (run_id,))

        self._write(write)

    # --- events -----------------------------------------------------------------------------

    def store_event(self, event: Event) -> int:
        row = _event_row(event)
        return self._write(lambda conn: int(conn.execute(_INSERT_EVENT, row).lastrowid or 0))

    def store_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [_event_row(event) for event in events]
        self._write(lambda conn: conn.executemany(_INSERT_EVENT, rows))

    def get_event_records(
        self,
        run_id: str,
        *,
        after_storage_id: int | None = None,
        limit: int | None = None,
        event_types: Sequence[EventType] | None = None,
    ) -> list[EventRecord]:
        sql = "SELECT id, body FROM events WHERE run_id = ?"
        params: list[Any] = [run_id]
        if after_storage_id is not None:
            sql += " AND id > ?"
            params.append(after_storage_id)
        if event_types is not None:
            types = [t.value for t in event_types]
            sql += f" AND event_type IN ({','.join('?' * len(types))})" if types else " AND 0"
            params.extend(types)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        loads = _serde.loads_event
        return [EventRecord(row[0], loads(row[1])) for row in self._read(sql, params)]

    # --- pools ------------------------------------------------------------------------------

    def set_pool_limit(self, pool: str, limit: int) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO pool_limits (pool, slot_limit) VALUES (?, ?) "
                "ON CONFLICT (pool) DO UPDATE SET slot_limit = excluded.slot_limit",
                (pool, limit),
            )
        )

    def get_pool_limits(self) -> dict[str, int]:
        return {
            row[0]: int(row[1]) for row in self._read("SELECT pool, slot_limit FROM pool_limits")
        }

    def delete_pool_limit(self, pool: str) -> None:
        self._write(lambda conn: conn.execute("DELETE FROM pool_limits WHERE pool = ?", (pool,)))

    @staticmethod
    def _holds(conn: sqlite3.Connection, pool: str, run_id: str, key: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM pool_slots WHERE pool = ? AND run_id = ? AND step_key = ?",
                (pool, run_id, key),
            ).fetchone()
            is not None
        )

    @classmethod
    def _slot_free(
        cls, conn: sqlite3.Connection, pool: str, run_id: str, key: str, limit: int
    ) -> bool:
        """Whether (run, step ``key``) holds or could take a slot of ``pool`` now."""
        if cls._holds(conn, pool, run_id, key):
            return True
        held = conn.execute("SELECT COUNT(*) FROM pool_slots WHERE pool = ?", (pool,))
        return bool(held.fetchone()[0] < limit)

    @classmethod
    def _claim(cls, conn: sqlite3.Connection, pool: str, run_id: str, key: str, limit: int) -> bool:
        """Take a slot inside the caller's transaction (``key`` is ``""`` for the whole run)."""
        if cls._holds(conn, pool, run_id, key):
            return True
        held = conn.execute("SELECT COUNT(*) FROM pool_slots WHERE pool = ?", (pool,))
        if held.fetchone()[0] >= limit:
            return False
        conn.execute(
            "INSERT INTO pool_slots (pool, run_id, step_key, claimed_at) VALUES (?, ?, ?, ?)",
            (pool, run_id, key, now()),
        )
        return True

    def claim_pool_slot(
        self,
        pool: str,
        run_id: str,
        step_key: str | None,
        *,
        limit: int,
        priority: int = 0,
        order: float = 0.0,
    ) -> bool:
        key = step_key or ""

        def write(conn: sqlite3.Connection) -> bool:
            ts = now()
            if self._holds(conn, pool, run_id, key):
                conn.execute(_DELETE_WAITER, (pool, run_id, key))
                return True
            held = conn.execute("SELECT COUNT(*) FROM pool_slots WHERE pool = ?", (pool,))
            free = limit - int(held.fetchone()[0])
            ahead = 0
            if free > 0:
                ahead = int(
                    conn.execute(
                        "SELECT COUNT(*) FROM pool_waiters WHERE pool = ? AND last_seen > ? "
                        "AND NOT (run_id = ? AND step_key = ?) AND (priority > ? OR "
                        "(priority = ? AND (run_order < ? OR (run_order = ? AND step_key < ?))))",
                        (pool, ts - WAITER_TTL, run_id, key, priority, priority, order, order, key),
                    ).fetchone()[0]
                )
            if free <= ahead:
                conn.execute(
                    "INSERT INTO pool_waiters (pool, run_id, step_key, priority, run_order, "
                    "last_seen) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pool, run_id, step_key) "
                    "DO UPDATE SET last_seen = excluded.last_seen",
                    (pool, run_id, key, priority, order, ts),
                )
                return False
            conn.execute(_DELETE_WAITER, (pool, run_id, key))
            conn.execute(
                "INSERT INTO pool_slots (pool, run_id, step_key, claimed_at) VALUES (?, ?, ?, ?)",
                (pool, run_id, key, ts),
            )
            return True

        return self._write(write)

    def release_pool_slots(
        self, run_id: str, step_key: str | None = None, *, events: Sequence[Event] = ()
    ) -> int:
        where = "run_id = ?"
        params: tuple[str, ...] = (run_id,)
        if step_key is not None:
            where += " AND step_key = ?"
            params = (run_id, step_key)
        rows = [_event_row(event) for event in events]

        def write(conn: sqlite3.Connection) -> int:
            if rows:
                conn.executemany(_INSERT_EVENT, rows)
            conn.execute(f"DELETE FROM pool_waiters WHERE {where}", params)
            return int(conn.execute(f"DELETE FROM pool_slots WHERE {where}", params).rowcount)

        return self._write(write)

    def reclaim_pool_slots(self) -> int:
        ended = "SELECT run_id FROM runs WHERE status IN ('SUCCESS', 'FAILURE', 'CANCELED')"
        alive = "SELECT run_id FROM runs"

        def write(conn: sqlite3.Connection) -> int:
            freed = conn.execute(
                f"DELETE FROM pool_slots WHERE run_id IN ({ended}) OR run_id NOT IN ({alive})"
            ).rowcount
            conn.execute(
                f"DELETE FROM pool_waiters WHERE run_id IN ({ended}) OR run_id NOT IN ({alive})"
            )
            return int(freed)

        return self._write(write)

    def get_pool_leases(self, pool: str | None = None) -> list[SlotLease]:
        sql = "SELECT pool, run_id, step_key, claimed_at FROM pool_slots"
        params: list[Any] = []
        if pool is not None:
            sql += " WHERE pool = ?"
            params.append(pool)
        sql += " ORDER BY id"
        return [
            SlotLease(row[0], row[1], row[2] or None, row[3]) for row in self._read(sql, params)
        ]

    # --- workers ----------------------------------------------------------------------------

    def record_worker(self, record: WorkerRecord) -> bool:
        row = (
            record.run_id,
            record.attempt_id,
            record.kind,
            record.host,
            json.dumps(record.handle),
            record.started_at,
            record.heartbeat_at,
        )

        def write(conn: sqlite3.Connection) -> bool:
            found = conn.execute(
                "SELECT 1 FROM runs WHERE run_id = ? "
                "AND json_valid(body) AND json_extract(body, '$.attempt_id') = ?",
                (record.run_id, record.attempt_id),
            ).fetchone()
            if found is None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO workers (run_id, attempt_id, kind, host, handle, "
                "started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return True

        return self._write(write)

    def get_worker_records(self, run_ids: Sequence[str]) -> dict[str, WorkerRecord]:
        ids = list(dict.fromkeys(run_ids))
        out: dict[str, WorkerRecord] = {}
        for i in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[i : i + 500]
            rows = self._read(
                "SELECT run_id, attempt_id, kind, host, handle, started_at, heartbeat_at "
                f"FROM workers WHERE run_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                record = worker_record_from_row(row)
                if record is not None:
                    out[record.run_id] = record
        return out

    def worker_heartbeat(self, run_id: str, attempt_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE run_id = ? AND attempt_id = ?",
                (now(), run_id, attempt_id),
            )
            return cur.rowcount > 0

        return self._write(write)

    # --- heartbeats -------------------------------------------------------------------------

    def add_daemon_heartbeat(self, heartbeat: DaemonHeartbeat) -> None:
        row = (
            heartbeat.daemon_id,
            heartbeat.daemon_type,
            heartbeat.timestamp,
            json.dumps(heartbeat.info),
        )
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO daemon_heartbeats (daemon_id, daemon_type, timestamp, info) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (daemon_id) DO UPDATE SET "
                "daemon_type = excluded.daemon_type, timestamp = excluded.timestamp, "
                "info = excluded.info",
                row,
            )
        )

    def get_daemon_heartbeats(self) -> list[DaemonHeartbeat]:
        return [
            DaemonHeartbeat(
                daemon_id=row[0], daemon_type=row[1], timestamp=row[2], info=json.loads(row[3])
            )
            for row in self._read(
                "SELECT daemon_id, daemon_type, timestamp, info FROM daemon_heartbeats "
                "ORDER BY daemon_id"
            )
        ]
