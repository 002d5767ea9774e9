"""SQLite storage: the embedded default. One file, many threads and processes.

* WAL journal, ``synchronous=NORMAL`` (durable across process crashes; a power loss may drop
  the last commits), and a busy timeout so concurrent writers wait instead of failing.
* One connection per thread (and per process: a forked child opens its own).
* Every write is one ``BEGIN IMMEDIATE`` transaction, so a writer takes the lock up front and
  the busy handler, not an error, resolves contention. A lock that outlasts the busy timeout is
  retried a few more times (tenacity) before it surfaces as :class:`StorageError`.
* A ``runcore_meta`` table holds the schema version. A newer schema, or a file that is not a
  runcore database, is refused with a clear message and left untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import attrs

from runcore import _serde
from runcore.errors import (
    DuplicateRunError,
    InstanceClosedError,
    RunNotFoundError,
    SchemaVersionError,
    StorageError,
)
from runcore.events import Event, EventRecord, EventType
from runcore.runs import Run, RunRecord, RunsFilter, RunStatus, check_transition
from runcore.storage.base import (
    DaemonHeartbeat,
    InstanceStorage,
    SlotLease,
    apply_transition,
    now,
    status_event,
)

SCHEMA_VERSION = 1
APP_ID = "runcore"

T = TypeVar("T")

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
CREATE INDEX IF NOT EXISTS run_tags_by_run ON run_tags (run_pk);
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
CREATE TABLE IF NOT EXISTS daemon_heartbeats (
    daemon_id TEXT PRIMARY KEY,
    daemon_type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    info TEXT NOT NULL
);
"""


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


class SqliteStorage(InstanceStorage):
    """Runs, events, pools and heartbeats in one SQLite file at ``path``.

    Threads: none of its own. Connections are opened lazily, one per calling thread, and all
    are closed by :meth:`close`.
    """

    shareable = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r})"

    def to_config(self) -> dict[str, Any]:
        return {"sqlite": {"path": os.path.abspath(self.path)}}

    # --- connections ------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise InstanceClosedError(f"{self!r} is closed")
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the directory {directory!r} for the SQLite database: {exc}; "
                "set storage.sqlite.path to a writable location"
            ) from exc
        if os.path.isdir(self.path):
            raise StorageError(
                f"the SQLite database path {self.path!r} is a directory; give a file path, "
                "e.g. storage.sqlite.path: .runcore/runs.db"
            )
        conn = self._open()
        self._check_schema(conn)
        self._started = True

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        with self._conns_lock:
            self._conns.append(conn)
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open_error(self, exc: sqlite3.DatabaseError) -> StorageError:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return SchemaVersionError(
                f"{self.path!r} is not a runcore database (SQLite says: {text}); it was left "
                "untouched. Point storage.sqlite.path at a new file or a runcore database"
            )
        if "unable to open" in text or "readonly" in text:
            return StorageError(
                f"cannot open the SQLite database {self.path!r}: {text}; check that the path "
                "exists and is writable, or set storage.sqlite.path elsewhere"
            )
        return StorageError(f"SQLite error on {self.path!r}: {text}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if self._closed:
            raise InstanceClosedError(f"{self!r} is closed")
        if not self._started:
            self.start()
            started: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if started is not None:
                return started
        return self._open()

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        if os.getpid() != self._pid:
            return  # connections inherited through fork belong to the parent
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "runcore_meta" not in tables:
                raise SchemaVersionError(
                    f"{self.path!r} is an SQLite database but not a runcore one (it has tables "
                    f"{', '.join(sorted(tables)[:5])}); it was left untouched. Point "
                    "storage.sqlite.path at a new file"
                )
            if not tables:
                with self._write(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT OR IGNORE INTO runcore_meta (key, value) VALUES (?, ?), (?, ?)",
                        ("app", APP_ID, "schema_version", str(SCHEMA_VERSION)),
                    )
            meta = dict(conn.execute("SELECT key, value FROM runcore_meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        if meta.get("app") != APP_ID:
            raise SchemaVersionError(
                f"{self.path!r} has a runcore_meta table but was not written by runcore"
            )
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path!r} was written by a newer runcore (schema version {version}; this "
                f"runcore reads up to {SCHEMA_VERSION}). Upgrade runcore, or use another "
                "database file"
            )
        if version < SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path!r} has schema version {version}, which this runcore cannot migrate"
            )

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; committed on success, rolled back on error."""
        conn = conn or self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _run_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction, retrying a lock that outlasted the busy timeout."""
        from runcore._retry import retry_sqlite_locked

        def attempt() -> T:
            with self._write() as conn:
                return fn(conn)

        try:
            return retry_sqlite_locked(attempt, _is_locked)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    # --- runs -------------------------------------------------------------------------------

    @staticmethod
    def _insert_run(conn: sqlite3.Connection, run: Run) -> None:
        try:
            cur = conn.execute(
                "INSERT INTO runs (run_id, job_name, status, parent_run_id, root_run_id,"
                " created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.job_name,
                    run.status.value,
                    run.parent_run_id,
                    run.root_run_id,
                    run.created_at,
                    run.updated_at,
                    _serde.dumps_run(run),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateRunError(run.run_id) from exc
        if run.tags:
            pk = cur.lastrowid
            conn.executemany(
                "INSERT INTO run_tags (key, value, run_pk) VALUES (?, ?, ?)",
                [(k, v, pk) for k, v in run.tags.items()],
            )

    def add_run(self, run: Run) -> Run:
        self._run_write(lambda conn: self._insert_run(conn, run))
        return run

    def add_runs(self, runs: Sequence[Run]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for run in runs:
                self._insert_run(conn, run)

        self._run_write(write)

    def get_run(self, run_id: str) -> Run | None:
        rows = self._read("SELECT body FROM runs WHERE run_id = ?", (run_id,))
        return _serde.loads_run(rows[0][0]) if rows else None

    def _where(self, filters: RunsFilter | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if filters is None:
            return "", params
        if filters.run_ids is not None:
            ids = list(filters.run_ids)
            clauses.append(f"run_id IN ({','.join('?' * len(ids))})" if ids else "0")
            params.extend(ids)
        if filters.job_name is not None:
            clauses.append("job_name = ?")
            params.append(filters.job_name)
        if filters.statuses is not None:
            statuses = [s.value for s in filters.statuses]
            clauses.append(f"status IN ({','.join('?' * len(statuses))})" if statuses else "0")
            params.extend(statuses)
        if filters.created_after is not None:
            clauses.append("created_at > ?")
            params.append(filters.created_after)
        if filters.created_before is not None:
            clauses.append("created_at < ?")
            params.append(filters.created_before)
        if filters.parent_run_id is not None:
            clauses.append("parent_run_id = ?")
            params.append(filters.parent_run_id)
        if filters.root_run_id is not None:
            clauses.append("root_run_id = ?")
            params.append(filters.root_run_id)
        for key, want in (filters.tags or {}).items():
            values = [want] if isinstance(want, str) else list(want)
            clauses.append(
                "EXISTS (SELECT 1 FROM run_tags t WHERE t.run_pk = runs.id AND t.key = ? AND "
                f"t.value IN ({','.join('?' * len(values))}))"
                if values
                else "0"
            )
            params.append(key)
            params.extend(values)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        where, params = self._where(filters)
        if after_storage_id is not None:
            where += (" AND " if where else " WHERE ") + ("id > ?" if ascending else "id < ?")
            params.append(after_storage_id)
        sql = f"SELECT id, body FROM runs{where} ORDER BY id {'ASC' if ascending else 'DESC'}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        loads = _serde.loads_run
        return [RunRecord(row[0], loads(row[1])) for row in self._read(sql, params)]

    def count_runs(self, filters: RunsFilter | None = None) -> int:
        where, params = self._where(filters)
        return int(self._read(f"SELECT COUNT(*) FROM runs{where}", params)[0][0])

    def add_run_tags(self, run_id: str, tags: Mapping[str, str]) -> Run:
        def write(conn: sqlite3.Connection) -> Run:
            row = conn.execute("SELECT id, body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            run = _serde.loads_run(row[1])
            run = attrs.evolve(run, tags={**run.tags, **tags})
            conn.execute("UPDATE runs SET body = ? WHERE id = ?", (_serde.dumps_run(run), row[0]))
            conn.executemany(
                "DELETE FROM run_tags WHERE run_pk = ? AND key = ?",
                [(row[0], k) for k in tags],
            )
            conn.executemany(
                "INSERT INTO run_tags (key, value, run_pk) VALUES (?, ?, ?)",
                [(k, v, row[0]) for k, v in tags.items()],
            )
            return run

        return self._run_write(write)

    def transition(
        self,
        run_id: str,
        from_statuses: Sequence[RunStatus],
        to_status: RunStatus,
        *,
        event: Event | None = None,
        failure_reason: str | None = None,
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
            ts = now()
            run = apply_transition(_serde.loads_run(row[2]), to_status, ts, failure_reason, event)
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, body = ? WHERE id = ?",
                (to_status.value, ts, _serde.dumps_run(run), row[0]),
            )
            self._insert_event(conn, status_event(run, to_status, event, ts))
            if to_status.is_terminal:
                conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,))
            return run

        return self._run_write(write)

    def delete_run(self, run_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM run_tags WHERE run_pk IN (SELECT id FROM runs WHERE run_id = ?)",
                (run_id,),
            )
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,))

        self._run_write(write)

    # --- events -----------------------------------------------------------------------------

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, event: Event) -> int:
        cur = conn.execute(
            "INSERT INTO events (run_id, event_type, step_key, timestamp, body)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                event.run_id,
                event.event_type.value,
                event.step_key,
                event.timestamp,
                _serde.dumps_event(event),
            ),
        )
        return int(cur.lastrowid or 0)

    def store_event(self, event: Event) -> int:
        return self._run_write(lambda conn: self._insert_event(conn, event))

    def store_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        dumps = _serde.dumps_event
        rows = [(e.run_id, e.event_type.value, e.step_key, e.timestamp, dumps(e)) for e in events]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO events (run_id, event_type, step_key, timestamp, body)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        self._run_write(write)

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
        self._run_write(
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
        self._run_write(
            lambda conn: conn.execute("DELETE FROM pool_limits WHERE pool = ?", (pool,))
        )

    def claim_pool_slot(self, pool: str, run_id: str, step_key: str | None, *, limit: int) -> bool:
        key = step_key or ""

        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                "SELECT 1 FROM pool_slots WHERE pool = ? AND run_id = ? AND step_key = ?",
                (pool, run_id, key),
            ).fetchone():
                return True
            held = conn.execute("SELECT COUNT(*) FROM pool_slots WHERE pool = ?", (pool,))
            if held.fetchone()[0] >= limit:
                return False
            conn.execute(
                "INSERT INTO pool_slots (pool, run_id, step_key, claimed_at) VALUES (?, ?, ?, ?)",
                (pool, run_id, key, now()),
            )
            return True

        return self._run_write(write)

    def release_pool_slots(self, run_id: str, step_key: str | None = None) -> int:
        if step_key is None:
            return self._run_write(
                lambda conn: (
                    conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,)).rowcount
                )
            )
        return self._run_write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM pool_slots WHERE run_id = ? AND step_key = ?", (run_id, step_key)
                ).rowcount
            )
        )

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

    # --- heartbeats -------------------------------------------------------------------------

    def add_daemon_heartbeat(self, heartbeat: DaemonHeartbeat) -> None:
        self._run_write(
            lambda conn: conn.execute(
                "INSERT INTO daemon_heartbeats (daemon_id, daemon_type, timestamp, info) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (daemon_id) DO UPDATE SET "
                "daemon_type = excluded.daemon_type, timestamp = excluded.timestamp, "
                "info = excluded.info",
                (
                    heartbeat.daemon_id,
                    heartbeat.daemon_type,
                    heartbeat.timestamp,
                    json.dumps(heartbeat.info),
                ),
            )
        )

    def get_daemon_heartbeats(self) -> list[DaemonHeartbeat]:
        return [
            DaemonHeartbeat(
                daemon_id=row[0], daemon_type=row[1], timestamp=row[2], info=json.loads(row[3])
            )
            for row in self._read(
                "SELECT daemon_id, daemon_type, timestamp, info FROM daemon_heartbeats"
            )
        ]
