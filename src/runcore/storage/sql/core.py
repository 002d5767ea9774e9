"""The SQL core: every query, transition and schema step of the SQL storages, written once.

:class:`SqlStorage` implements the storage interface over a
:class:`~runcore.storage.sql.dialect.Dialect` (the few statements that differ) and, in a
subclass, its connections (``_write``, ``_read``, ``_transaction``, ``start``/``close``/
``migrate``), as :class:`~runcore.storage.sqlite.SqliteStorage` does. Values are serialized
before a write begins; a check and the write that depends on it are one transaction.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from runcore import _serde
from runcore.errors import DuplicateRunError, RunNotFoundError
from runcore.events import Event, EventRecord, EventType
from runcore.runs import Run, RunRecord, RunsFilter, RunStatus
from runcore.runs import check_transition as _check_transition
from runcore.storage.base import (
    WAITER_TTL,
    DaemonHeartbeat,
    InstanceStorage,
    LimitCheck,
    QueuedRunRow,
    QueueReader,
    RunStart,
    SlotLease,
    WorkerRecord,
)
from runcore.storage.rows import (
    apply_transition,
    attempt_allows,
    read_run,
    status_event,
    worker_record_from_row,
    writable,
)
from runcore.storage.sql.batch import record_workers as record_batch
from runcore.storage.sql.batch import start_runs as start_batch
from runcore.storage.sql.dialect import Dialect, Landed, SqlConnection
from runcore.storage.sql.filters import from_where as _from_where
from runcore.storage.sql.filters import limit_clause, marks
from runcore.storage.sql.filters import select as _select
from runcore.storage.sql.migrations import (
    Place,
    check_meta,
    create,
    refuse_older,
    tables,
    upgrade,
)
from runcore.storage.sql.queue import in_progress_tags, in_progress_tags_in, queued_run_rows
from runcore.storage.sql.schema import (
    ANY_OWNER_GONE,
    DELETE_TAG,
    DELETE_WAITER,
    EVENT_WITH_UID,
    INSERT_EVENT,
    INSERT_RUN,
    INSERT_SLOT,
    INSERT_TAG,
    INSERT_TAGS,
    OWNER_GONE,
    RUN_WITH_BODY,
    SCHEMA_VERSION,
    UPSERT_HEARTBEAT,
    UPSERT_POOL_LIMIT,
    UPSERT_WAITER,
    WORKER_WITH_HANDLE,
    event_row,
    new_event_uid,
    run_row,
    worker_row,
)

T = TypeVar("T")


class SqlStorage(InstanceStorage, QueueReader):
    """Runs, events, pools, workers and heartbeats in the tables of
    :mod:`runcore.storage.sql.schema`, for any :class:`Dialect`.

    Abstract: a subclass owns the connections (see the module docstring) and sets
    :attr:`place` for messages. ``auto_migrate`` upgrades an older schema on open (else that is
    an error naming ``runcore instance migrate``).
    """

    stamps_start_as_heartbeat = True

    shareable = True

    def __init__(self, dialect: Dialect, *, auto_migrate: bool = False) -> None:
        self.dialect = dialect
        self.auto_migrate = auto_migrate

    # --- what a database's storage provides -------------------------------------------------

    @property
    @abstractmethod
    def place(self) -> Place:
        """How messages name this database, and what to use instead."""

    @abstractmethod
    def _write(
        self,
        fn: Callable[[SqlConnection], T],
        *,
        idempotent: bool = False,
        landed: Landed | None = None,
    ) -> T:
        """Run ``fn`` in one write transaction on a connection of this storage (retrying the
        database's transient failures); errors translated into runcore's. Where a commit can
        be lost on the way back (a server), the write is tried again only if ``idempotent``,
        or once its ``landed`` query finds no row (a row: the first try's result is returned)."""

    @abstractmethod
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query (``?`` placeholders); errors translated into runcore's."""

    @abstractmethod
    def _transaction(self, conn: SqlConnection, fn: Callable[[SqlConnection], T]) -> T:
        """Run ``fn`` in one write transaction on ``conn``: committed on success, rolled back
        on error. No retries (the caller's)."""

    # --- schema -----------------------------------------------------------------------------

    def _before_first_write(self, conn: SqlConnection, *, empty: bool) -> None:
        """Called once the database is known to be runcore's (or ``empty``), before anything
        is written: a database's settings (SQLite: page size, WAL). Default: nothing."""

    def _prepare(self, conn: SqlConnection) -> None:
        """Check that the database is ours (or empty) before writing anything; then create
        its tables, or upgrade an older schema if ``auto_migrate`` allows."""
        found = tables(conn, self.dialect)
        version = check_meta(conn, found, self.place) if found else SCHEMA_VERSION
        if version < SCHEMA_VERSION and not self.auto_migrate:
            raise refuse_older(version, self.place)
        self._before_first_write(conn, empty=not found)
        if found:
            if version < SCHEMA_VERSION:
                upgrade(conn, self.dialect, self._transaction, self.place)
            return
        create(conn, self.dialect, self._transaction, self.place)

    def _migrate_schema(self, conn: SqlConnection) -> int:
        """Upgrade (or create) the schema on ``conn``; returns the version it had."""
        found = tables(conn, self.dialect)
        before = check_meta(conn, found, self.place) if found else SCHEMA_VERSION
        if found:
            upgrade(conn, self.dialect, self._transaction, self.place)
        else:
            self._prepare(conn)
        return before

    # --- runs -------------------------------------------------------------------------------

    def _insert_runs(
        self, conn: SqlConnection, runs: Sequence[Run], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        try:
            pks = self.dialect.insert_ids(conn, INSERT_RUN, rows)
        except self.dialect.integrity_errors as exc:
            raise DuplicateRunError(runs[0].run_id) from exc  # which one: see add_runs
        tags = [(k, v, pk) for run, pk in zip(runs, pks, strict=True) for k, v in run.tags.items()]
        for first in range(0, len(tags), 300):  # a few multi-row INSERTs, not one per tag
            chunk = tags[first : first + 300]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            conn.execute(f"{INSERT_TAGS} {values}", [value for tag in chunk for value in tag])

    def add_run(self, run: Run) -> Run:
        self.add_runs([run])
        return run

    def add_runs(self, runs: Sequence[Run]) -> None:
        if not runs:
            return
        rows = [run_row(run) for run in runs]
        # All or none of them committed: the first, with this very body, tells.
        landed = (RUN_WITH_BODY, (runs[0].run_id, rows[0][-1]))
        try:
            self._write(lambda conn: self._insert_runs(conn, runs, rows), landed=landed)
        except DuplicateRunError as exc:  # the batch was rolled back: name the duplicate
            ids = [run.run_id for run in runs]
            again = [run_id for i, run_id in enumerate(ids) if run_id in ids[:i]]
            raise DuplicateRunError((again or self.get_run_ids(RunsFilter(run_ids=ids)))[0]) from (
                exc.__cause__
            )

    def get_queued_run_rows(self, run_ids: Sequence[str] | None = None) -> list[QueuedRunRow]:
        return queued_run_rows(self.dialect, self._read, run_ids)

    def get_in_progress_tags(self) -> list[tuple[str, dict[str, str]]]:
        return in_progress_tags(self.dialect, self._read)

    def get_run(self, run_id: str) -> Run | None:
        rows = self._read(
            "SELECT body, run_id, status, job_name FROM runs WHERE run_id = ?", (run_id,)
        )
        if not rows:
            return None
        body, stored_id, status, job_name = rows[0]
        return read_run(body, run_id=stored_id, status=status, job_name=job_name)

    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        columns = "runs.id, runs.body, runs.run_id, runs.status, runs.job_name"
        sql, params = _select(columns, filters, limit, ascending, after_storage_id)
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
        sql, params = _select("runs.run_id", filters, limit, ascending, after_storage_id)
        return [row[0] for row in self._read(sql, params)]

    def count_runs(self, filters: RunsFilter | None = None) -> int:
        source, _, params = _from_where(filters, None, False)
        return int(self._read(f"SELECT COUNT(*){source}", params)[0][0])

    def add_run_tags(self, run_id: str, tags: Mapping[str, str]) -> Run:
        tags = dict(tags)
        select = f"SELECT id, body, status FROM runs WHERE run_id = ?{self.dialect.for_update}"

        def write(conn: SqlConnection) -> Run:
            row = conn.execute(select, (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            pk, old = row[0], writable(read_run(row[1], run_id=run_id, status=row[2]))
            run = attrs.evolve(old, tags={**old.tags, **tags})
            conn.execute("UPDATE runs SET body = ? WHERE id = ?", (_serde.dumps_run(run), pk))
            conn.executemany(DELETE_TAG, [(k, old.tags[k], pk) for k in tags if k in old.tags])
            conn.executemany(INSERT_TAG, [(k, v, pk) for k, v in tags.items()])
            return run

        return self._write(write, idempotent=True)

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
        limit_check: LimitCheck | None = None,
    ) -> Run | None:
        _check_transition(from_statuses, to_status)
        allowed = {status.value for status in from_statuses}
        # The status event's uid, the same in every try: it tells whether a try committed.
        uid = new_event_uid() if self.dialect.event_uids else None
        select = f"SELECT id, status, body FROM runs WHERE run_id = ?{self.dialect.for_update}"

        def write(conn: SqlConnection) -> Run | None:
            row = conn.execute(select, (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            if row[1] not in allowed:
                return None
            old = writable(read_run(row[2], run_id=run_id, status=row[1]))
            if not attempt_allows(old, to_status, attempt_id):
                return None
            if limit_check is not None:
                self.dialect.lock(conn, "runcore.admission")
                if not limit_check(self._in_progress_tags(conn)):
                    return None
            # Check every pool before taking any slot: all or nothing (no other writer can
            # come in between: the transaction holds the database's or the pools' locks).
            if not all(self._slot_free(conn, pool, run_id, "", n) for pool, n in claim_slots):
                return None
            ts = self.dialect.now(conn)
            for pool, _ in claim_slots:
                if not self._holds(conn, pool, run_id, ""):
                    conn.execute(INSERT_SLOT, (pool, run_id, "", ts))
            run = apply_transition(old, to_status, ts, failure_reason, event, attempt_id=attempt_id)
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, body = ? WHERE id = ?",
                (to_status.value, ts, _serde.dumps_run(run), row[0]),
            )
            change = event_row(status_event(run, to_status, event, ts), uid or False)
            self._lock_events(conn).execute(INSERT_EVENT, change)
            if to_status is RunStatus.STARTED:  # the worker's first sign of life
                conn.execute(
                    "UPDATE workers SET heartbeat_at = ? WHERE run_id = ? AND attempt_id = ?",
                    (ts, run_id, run.attempt_id or ""),
                )
            if to_status.is_terminal or to_status is RunStatus.QUEUED:
                self.dialect.notify(conn, "queued" if to_status is RunStatus.QUEUED else "ended")
            # A run ending or going back to the queue frees its slots; one never started holds
            # none (the common enqueue skips two writes).
            if row[1] != RunStatus.NOT_STARTED.value and (
                to_status.is_terminal or to_status is RunStatus.QUEUED
            ):
                conn.execute("DELETE FROM pool_slots WHERE run_id = ?", (run_id,))
                conn.execute("DELETE FROM pool_waiters WHERE run_id = ?", (run_id,))
            return run

        return self._write(write, landed=(EVENT_WITH_UID, (uid,)) if uid else None)

    def start_runs(self, starts: Sequence[RunStart]) -> list[Run | None]:
        if not starts:
            return []
        return self._write(lambda conn: start_batch(self, conn, starts))

    def _in_progress_tags(self, conn: SqlConnection) -> list[dict[str, str]]:
        """The tags of every run in progress (a run whose JSON cannot be read: no tags)."""
        return in_progress_tags_in(self.dialect, conn)

    def delete_run(self, run_id: str) -> None:
        def write(conn: SqlConnection) -> None:
            row = conn.execute("SELECT id, body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                pk, run = row[0], read_run(row[1], run_id=run_id)
                if run.corrupt is None:
                    conn.executemany(DELETE_TAG, [(k, v, pk) for k, v in run.tags.items()])
                else:  # its tags cannot be read from its body: find their rows the slow way
                    conn.execute("DELETE FROM run_tags WHERE run_pk = ?", (pk,))
                conn.execute("DELETE FROM runs WHERE id = ?", (pk,))
            for table in ("events", "workers", "pool_slots", "pool_waiters"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

        self._write(write, idempotent=True)

    # --- events -----------------------------------------------------------------------------

    def _lock_events(self, conn: SqlConnection) -> SqlConnection:
        """Taken before a transaction inserts events, held until it commits: ids then commit in
        the order they are handed out (the cross-run cursor skips none). No-op on SQLite."""
        self.dialect.lock(conn, "runcore.events")
        return conn

    def store_event(self, event: Event) -> int:
        row = event_row(event, self.dialect.event_uids)
        if not self.dialect.event_uids:  # no uid, no lost commit to look for: a plain insert
            return self._write(
                lambda conn: int(self._lock_events(conn).execute(INSERT_EVENT, row).lastrowid or 0)
            )
        by_uid = "SELECT id FROM events WHERE uid = ?"  # stored by a try whose commit was lost

        def write(conn: SqlConnection) -> int:
            pk = self.dialect.insert_id(self._lock_events(conn), INSERT_EVENT, row)
            return pk or int(conn.execute(by_uid, (row[-1],)).fetchone()[0])

        return self._write(write, idempotent=True)

    def store_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [event_row(event, self.dialect.event_uids) for event in events]
        self._write(
            lambda conn: self._lock_events(conn).executemany(INSERT_EVENT, rows), idempotent=True
        )

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
            sql += f" AND event_type IN ({marks(len(types))})" if types else " AND 1 = 0"
            params.extend(types)
        sql += " ORDER BY id"
        if limit is not None:
            sql += limit_clause(limit)
        loads = _serde.loads_event
        return [EventRecord(row[0], loads(row[1])) for row in self._read(sql, params)]

    def get_events_after(self, cursor: int | None, limit: int) -> list[EventRecord]:
        clauses: list[str] = []
        params: list[Any] = []
        if cursor is not None:
            clauses.append("id > ?")
            params.append(cursor)
        visible = self.dialect.events_visible()
        if visible:
            clauses.append(visible)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT id, body FROM events{where} ORDER BY id{limit_clause(limit)}"
        loads = _serde.loads_event
        return [EventRecord(row[0], loads(row[1])) for row in self._read(sql, params)]

    # --- pools ------------------------------------------------------------------------------

    def set_pool_limit(self, pool: str, limit: int) -> None:
        self._write(lambda conn: conn.execute(UPSERT_POOL_LIMIT, (pool, limit)), idempotent=True)

    def get_pool_limits(self) -> dict[str, int]:
        rows = self._read("SELECT pool, slot_limit FROM pool_limits")
        return {row[0]: int(row[1]) for row in rows}

    def delete_pool_limit(self, pool: str) -> None:
        self._write(
            lambda conn: conn.execute("DELETE FROM pool_limits WHERE pool = ?", (pool,)),
            idempotent=True,
        )

    @staticmethod
    def _holds(conn: SqlConnection, pool: str, run_id: str, key: str) -> bool:
        found = conn.execute(
            "SELECT 1 FROM pool_slots WHERE pool = ? AND run_id = ? AND step_key = ?",
            (pool, run_id, key),
        )
        return found.fetchone() is not None

    def _held(self, conn: SqlConnection, pool: str) -> int:
        """Slots of ``pool`` held now, under the pool's lock until the transaction ends."""
        self.dialect.lock(conn, f"runcore.pool:{pool}")
        return int(
            conn.execute("SELECT COUNT(*) FROM pool_slots WHERE pool = ?", (pool,)).fetchone()[0]
        )

    def _slot_free(self, conn: SqlConnection, pool: str, run_id: str, key: str, limit: int) -> bool:
        """Whether (run, step ``key``) holds or could take a slot of ``pool`` now."""
        return self._holds(conn, pool, run_id, key) or self._held(conn, pool) < limit

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

        def write(conn: SqlConnection) -> bool:
            ts = self.dialect.now(conn)
            if self._holds(conn, pool, run_id, key):
                conn.execute(DELETE_WAITER, (pool, run_id, key))
                return True
            free = limit - self._held(conn, pool)
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
                conn.execute(UPSERT_WAITER, (pool, run_id, key, priority, order, ts))
                return False
            conn.execute(DELETE_WAITER, (pool, run_id, key))
            conn.execute(INSERT_SLOT, (pool, run_id, key, ts))
            return True

        return self._write(write, idempotent=True)

    def release_pool_slots(
        self, run_id: str, step_key: str | None = None, *, events: Sequence[Event] = ()
    ) -> int:
        where = "run_id = ?"
        params: tuple[str, ...] = (run_id,)
        if step_key is not None:
            where += " AND step_key = ?"
            params = (run_id, step_key)
        rows = [event_row(event, self.dialect.event_uids) for event in events]

        def write(conn: SqlConnection) -> int:
            if rows:
                self._lock_events(conn).executemany(INSERT_EVENT, rows)
            conn.execute(f"DELETE FROM pool_waiters WHERE {where}", params)
            return int(conn.execute(f"DELETE FROM pool_slots WHERE {where}", params).rowcount)

        return self._write(write, idempotent=True)

    def reclaim_pool_slots(self) -> int:
        def write(conn: SqlConnection) -> int:
            freed = conn.execute(f"DELETE FROM pool_slots WHERE {OWNER_GONE}").rowcount
            conn.execute(f"DELETE FROM pool_waiters WHERE {OWNER_GONE}")
            return int(freed)

        # Nearly always nothing leaked: one read, and no write transaction, per monitoring pass.
        if not self._read(ANY_OWNER_GONE)[0][0]:
            return 0
        return self._write(write, idempotent=True)

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

    def record_worker(self, record: WorkerRecord, *, replace: bool = True) -> bool:
        return self.record_workers([record], replace=replace)[0]

    def record_workers(
        self, records: Sequence[WorkerRecord], *, replace: bool = True
    ) -> list[bool]:
        if not records:
            return []
        rows = [(record, worker_row(record)) for record in records]
        # All or none of them committed: the first record's handle tells.
        first = rows[0][1]
        landed = (WORKER_WITH_HANDLE, (first[0], first[1], first[4]))
        return self._write(lambda conn: record_batch(self, conn, rows, replace), landed=landed)

    def get_worker_records(self, run_ids: Sequence[str]) -> dict[str, WorkerRecord]:
        ids = list(dict.fromkeys(run_ids))
        out: dict[str, WorkerRecord] = {}
        step = self.dialect.max_in_list
        for i in range(0, len(ids), step):
            chunk = ids[i : i + step]
            rows = self._read(
                "SELECT run_id, attempt_id, kind, host, handle, started_at, heartbeat_at "
                f"FROM workers WHERE run_id IN ({marks(len(chunk))})",
                chunk,
            )
            for row in rows:
                record = worker_record_from_row(row)
                if record is not None:
                    out[record.run_id] = record
        return out

    def worker_heartbeat(self, run_id: str, attempt_id: str) -> bool:
        def write(conn: SqlConnection) -> bool:
            cur = conn.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE run_id = ? AND attempt_id = ?",
                (self.dialect.now(conn), run_id, attempt_id),
            )
            return bool(cur.rowcount > 0)

        return self._write(write, idempotent=True)

    # --- daemon heartbeats ------------------------------------------------------------------

    def add_daemon_heartbeat(self, heartbeat: DaemonHeartbeat) -> None:
        row = (
            heartbeat.daemon_id,
            heartbeat.daemon_type,
            heartbeat.timestamp,
            json.dumps(heartbeat.info),
        )
        self._write(lambda conn: conn.execute(UPSERT_HEARTBEAT, row), idempotent=True)

    def get_daemon_heartbeats(self) -> list[DaemonHeartbeat]:
        rows = self._read(
            "SELECT daemon_id, daemon_type, timestamp, info FROM daemon_heartbeats "
            "ORDER BY daemon_id"
        )
        return [
            DaemonHeartbeat(
                daemon_id=row[0], daemon_type=row[1], timestamp=row[2], info=json.loads(row[3])
            )
            for row in rows
        ]


__all__ = ["SqlStorage"]
