"""The tables of the SQL storages, written once for every dialect.

Column types and the few clauses that differ between databases are filled in from the
:class:`~runcore.storage.sql.dialect.Dialect`: the auto-increment key (``INTEGER PRIMARY KEY
AUTOINCREMENT`` on SQLite, ``BIGSERIAL PRIMARY KEY`` on PostgreSQL), the floating-point type and
SQLite's ``WITHOUT ROWID``. Everything else is plain SQL both speak.

``SCHEMA_VERSION`` is the version a new database is created at; older ones are upgraded by
:mod:`runcore.storage.sql.migrations`.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from runcore import _serde

if TYPE_CHECKING:
    from runcore.events import Event
    from runcore.runs import Run
    from runcore.storage.base import WorkerRecord
    from runcore.storage.sql.dialect import Dialect

#: 1: the first release. 2: worker records in their own table (``workers``); the
#: ``runcore/worker_*`` tags of version 1 are deleted, never read again. 3: ``events.uid``, a
#: client-generated id under a unique index, so an insert retried after a lost commit is
#: ignored instead of stored twice (NULL where the dialect needs none: SQLite).
SCHEMA_VERSION = 3

#: What ``runcore_meta.app`` says in a database runcore wrote.
APP_ID = "runcore"

#: Version 2's table: who executes each run's current attempt (see ``WorkerRecord``).
WORKERS_TABLE = """
CREATE TABLE IF NOT EXISTS workers (
    run_id TEXT PRIMARY KEY,
    attempt_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    handle TEXT NOT NULL,
    started_at {real} NOT NULL,
    heartbeat_at {real}
){without_rowid}
"""

# ``storage_id`` must increase in insertion order even after deletes, hence an auto-increment
# key that never hands out a deleted id again (a plain SQLite rowid table may) on ``runs`` and
# ``events``. ``run_tags`` is keyed by (key, value, run) for tag queries; a run's tag rows are
# found from the tags in its body, so no second index on ``run_pk`` is needed.
#: Event uids are unique where given (a server storage gives each event one, so a retried insert
#: is ignored); SQLite gives none, and a partial index costs its inserts nothing for them.
#: (A database made before this index was partial keeps its full one: right, a little slower.)
EVENTS_BY_UID = (
    "CREATE UNIQUE INDEX IF NOT EXISTS events_by_uid ON events (uid) WHERE uid IS NOT NULL"
)

_TABLES = (
    "CREATE TABLE IF NOT EXISTS runcore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS runs (
        id {id_key},
        run_id TEXT NOT NULL UNIQUE,
        job_name TEXT NOT NULL,
        status TEXT NOT NULL,
        parent_run_id TEXT,
        root_run_id TEXT,
        created_at {real} NOT NULL,
        updated_at {real},
        body TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id)",
    "CREATE INDEX IF NOT EXISTS runs_by_status_updated ON runs (status, updated_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_name, id)",
    "CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id) "
    "WHERE parent_run_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS runs_by_root ON runs (root_run_id) WHERE root_run_id IS NOT NULL",
    """
    CREATE TABLE IF NOT EXISTS run_tags (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        run_pk {bigint} NOT NULL,
        PRIMARY KEY (key, value, run_pk)
    ){without_rowid}
    """,
    """
    CREATE TABLE IF NOT EXISTS events (
        id {id_key},
        run_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        step_key TEXT,
        timestamp {real} NOT NULL,
        body TEXT NOT NULL,
        uid TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, id)",
    EVENTS_BY_UID,
    "CREATE TABLE IF NOT EXISTS pool_limits (pool TEXT PRIMARY KEY, slot_limit INTEGER NOT NULL)",
    """
    CREATE TABLE IF NOT EXISTS pool_slots (
        id {id_key},
        pool TEXT NOT NULL,
        run_id TEXT NOT NULL,
        step_key TEXT NOT NULL DEFAULT '',
        claimed_at {real} NOT NULL,
        UNIQUE (pool, run_id, step_key)
    )
    """,
    "CREATE INDEX IF NOT EXISTS pool_slots_by_run ON pool_slots (run_id)",
    """
    CREATE TABLE IF NOT EXISTS pool_waiters (
        pool TEXT NOT NULL,
        run_id TEXT NOT NULL,
        step_key TEXT NOT NULL,
        priority INTEGER NOT NULL,
        run_order {real} NOT NULL,
        last_seen {real} NOT NULL,
        PRIMARY KEY (pool, run_id, step_key)
    ){without_rowid}
    """,
    "CREATE INDEX IF NOT EXISTS pool_waiters_by_run ON pool_waiters (run_id)",
    """
    CREATE TABLE IF NOT EXISTS daemon_heartbeats (
        daemon_id TEXT PRIMARY KEY,
        daemon_type TEXT NOT NULL,
        timestamp {real} NOT NULL,
        info TEXT NOT NULL
    )
    """,
    WORKERS_TABLE,
)


def render(statement: str, dialect: Dialect) -> str:
    """``statement`` with the dialect's types and clauses filled in."""
    return statement.format(
        id_key=dialect.id_key,
        real=dialect.real_type,
        bigint=dialect.bigint_type,
        without_rowid=dialect.without_rowid,
    ).strip()


def create_statements(dialect: Dialect) -> list[str]:
    """The statements that create every table and index of :data:`SCHEMA_VERSION` (after the
    dialect's own helpers, such as PostgreSQL's JSON parse function)."""
    return [*dialect.schema_preamble, *(render(statement, dialect) for statement in _TABLES)]


# --- statements the queries share ----------------------------------------------------------

INSERT_RUN = (
    "INSERT INTO runs (run_id, job_name, status, parent_run_id, root_run_id, created_at,"
    " updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_TAG = "INSERT INTO run_tags (key, value, run_pk) VALUES (?, ?, ?)"
#: The same for many tags: followed by ``(?, ?, ?)`` per tag, comma-separated.
INSERT_TAGS = "INSERT INTO run_tags (key, value, run_pk) VALUES"

#: Pool rows (slots, waiters) whose run has ended or is gone: run monitoring's safety net.
OWNER_GONE = (
    "run_id IN (SELECT run_id FROM runs WHERE status IN ('SUCCESS', 'FAILURE', 'CANCELED')) "
    "OR run_id NOT IN (SELECT run_id FROM runs)"
)
ANY_OWNER_GONE = (
    f"SELECT EXISTS (SELECT 1 FROM pool_slots WHERE {OWNER_GONE}) "
    f"OR EXISTS (SELECT 1 FROM pool_waiters WHERE {OWNER_GONE})"
)

# One row if, and only if, a write committed: how a write whose commit was lost is resolved.
RUN_WITH_BODY = "SELECT 1 FROM runs WHERE run_id = ? AND body = ?"
EVENT_WITH_UID = "SELECT 1 FROM events WHERE uid = ?"
WORKER_WITH_HANDLE = "SELECT 1 FROM workers WHERE run_id = ? AND attempt_id = ? AND handle = ?"
DELETE_TAG = "DELETE FROM run_tags WHERE key = ? AND value = ? AND run_pk = ?"
DELETE_WAITER = "DELETE FROM pool_waiters WHERE pool = ? AND run_id = ? AND step_key = ?"
INSERT_EVENT = (
    "INSERT INTO events (run_id, event_type, step_key, timestamp, body, uid) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uid) WHERE uid IS NOT NULL DO NOTHING"
)
INSERT_SLOT = "INSERT INTO pool_slots (pool, run_id, step_key, claimed_at) VALUES (?, ?, ?, ?)"
UPSERT_WAITER = (
    "INSERT INTO pool_waiters (pool, run_id, step_key, priority, run_order, last_seen) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pool, run_id, step_key) "
    "DO UPDATE SET last_seen = excluded.last_seen"
)
UPSERT_WORKER = (
    "INSERT INTO workers (run_id, attempt_id, kind, host, handle, started_at, heartbeat_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
    "attempt_id = excluded.attempt_id, kind = excluded.kind, host = excluded.host, "
    "handle = excluded.handle, started_at = excluded.started_at, "
    "heartbeat_at = excluded.heartbeat_at"
)
UPSERT_POOL_LIMIT = (
    "INSERT INTO pool_limits (pool, slot_limit) VALUES (?, ?) "
    "ON CONFLICT (pool) DO UPDATE SET slot_limit = excluded.slot_limit"
)
UPSERT_HEARTBEAT = (
    "INSERT INTO daemon_heartbeats (daemon_id, daemon_type, timestamp, info) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (daemon_id) DO UPDATE SET "
    "daemon_type = excluded.daemon_type, timestamp = excluded.timestamp, info = excluded.info"
)


def run_row(run: Run) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_RUN` for ``run``."""
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


def worker_row(record: WorkerRecord) -> tuple[Any, ...]:
    """The parameters of :data:`UPSERT_WORKER` for ``record``."""
    return (
        record.run_id,
        record.attempt_id,
        record.kind,
        record.host,
        json.dumps(record.handle),
        record.started_at,
        record.heartbeat_at,
    )


def new_event_uid() -> str:
    """A fresh event ``uid``."""
    return uuid.uuid4().hex


def event_row(event: Event, uid: bool | str = False) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_EVENT` for ``event``; with ``uid``, a new random one
    (or that one, a string), made once so that a retried insert carries the same (and is
    ignored)."""
    body = _serde.dumps_event(event)
    key = uid if isinstance(uid, str) else (new_event_uid() if uid else None)
    return (event.run_id, event.event_type.value, event.step_key, event.timestamp, body, key)
