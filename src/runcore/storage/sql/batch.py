"""Batched writes of the SQL core: a dequeue pass's admissions in one transaction.

On a server every commit waits for the disk (a few hundred a second with fsync), so a pass that
starts runs one transaction each is bound by it; :func:`start_runs` writes a batch of starts
with one commit, each start still its own compare-and-set, and :func:`record_workers` the
worker records of a batch. Both read what they check for the whole batch in one query, and
write with ``executemany`` (one pipelined round trip on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runcore import _serde
from runcore.runs import Run, RunStatus
from runcore.storage.base import RunStart, WorkerRecord
from runcore.storage.rows import apply_transition, read_run, status_event
from runcore.storage.sql.dialect import SqlConnection
from runcore.storage.sql.filters import marks
from runcore.storage.sql.schema import INSERT_EVENT, INSERT_SLOT, UPSERT_WORKER, event_row

if TYPE_CHECKING:
    from runcore.storage.sql.core import SqlStorage

_SET_STATUS = "UPDATE runs SET status = ?, updated_at = ?, body = ? WHERE id = ?"


def _rows(storage: SqlStorage, conn: SqlConnection, sql: str, ids: list[str]) -> list[Any]:
    """The rows of ``sql`` (ending in ``IN (``) over ``ids``, ``max_in_list`` at a time."""
    step = storage.dialect.max_in_list
    found: list[Any] = []
    for i in range(0, len(ids), step):
        chunk = ids[i : i + step]
        found += conn.execute(sql.replace("IN (", f"IN ({marks(len(chunk))}", 1), chunk).fetchall()
    return found


def start_runs(
    storage: SqlStorage, conn: SqlConnection, starts: Sequence[RunStart]
) -> list[Run | None]:
    """:meth:`~runcore.storage.base.RunStorage.start_runs` inside the transaction of ``conn``.

    Locks are taken in the order a single transition takes them (admission, then each pool by
    name, events last), and the runs' rows with ``SKIP LOCKED`` where the database has row
    locks: a run another writer is moving now is left to it (not started here) instead of
    waited for, so batches of two daemons never wait on each other in a cycle.
    """
    d = storage.dialect
    in_progress: list[dict[str, str]] | None = None
    if any(start.limit_check is not None for start in starts):
        d.lock(conn, "runcore.admission")
        in_progress = list(storage._in_progress_tags(conn))
    held = {
        pool: storage._held(conn, pool)  # takes the pool's lock
        for pool in sorted({pool for start in starts for pool, _ in start.claim_slots})
    }
    ids = list(dict.fromkeys(start.run_id for start in starts))
    rows = {
        row[1]: row
        for row in _rows(
            storage,
            conn,
            f"SELECT id, run_id, status, body FROM runs WHERE run_id IN ()"
            f" AND status = 'QUEUED'{d.skip_locked}",
            ids,
        )
    }
    holding: set[tuple[str, str]] = set()
    if held:
        sql = "SELECT pool, run_id FROM pool_slots WHERE step_key = '' AND run_id IN ()"
        holding = {(row[0], row[1]) for row in _rows(storage, conn, sql, ids)}
    ts = d.now(conn)
    updates: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    slots: list[tuple[Any, ...]] = []
    started: list[Run | None] = []
    for start in starts:
        row = rows.pop(start.run_id, None)  # popped: a run listed twice starts once
        if row is None:
            started.append(None)
            continue
        old = read_run(row[3], run_id=start.run_id, status=row[2])
        if old.corrupt is not None:
            started.append(None)
            continue
        if in_progress is not None and start.limit_check and not start.limit_check(in_progress):
            started.append(None)
            continue
        wanted = [pool for pool, _ in start.claim_slots if (pool, start.run_id) not in holding]
        if any(held[pool] >= limit for pool, limit in start.claim_slots if pool in wanted):
            started.append(None)
            continue
        for pool in wanted:
            held[pool] += 1
            slots.append((pool, start.run_id, "", ts))
        run = apply_transition(old, RunStatus.STARTING, ts, None, start.event)
        if in_progress is not None:
            in_progress.append(run.tags)
        updates.append((RunStatus.STARTING.value, ts, _serde.dumps_run(run), row[0]))
        change = status_event(run, RunStatus.STARTING, start.event, ts)
        events.append(event_row(change, d.event_uids))
        started.append(run)
    if slots:
        conn.executemany(INSERT_SLOT, slots)
    if updates:
        conn.executemany(_SET_STATUS, updates)
        storage._lock_events(conn).executemany(INSERT_EVENT, events)
    return started


def record_workers(
    storage: SqlStorage,
    conn: SqlConnection,
    records: Sequence[tuple[WorkerRecord, tuple[Any, ...]]],
    replace: bool,
) -> list[bool]:
    """:meth:`~runcore.storage.base.WorkerStorage.record_workers` inside the transaction of
    ``conn``: (record, its ``UPSERT_WORKER`` row) pairs."""
    d = storage.dialect
    ids = list(dict.fromkeys(record.run_id for record, _ in records))
    attempt = d.json_text("body", ["attempt_id"])
    sql = (
        f"SELECT run_id, {attempt} FROM runs WHERE run_id IN () AND {d.json_valid('body')}"
        f" ORDER BY id{d.for_update}"
    )
    current = {row[0]: row[1] for row in _rows(storage, conn, sql, ids)}
    sql = "SELECT run_id, attempt_id FROM workers WHERE run_id IN ()"
    held = {(row[0], row[1]) for row in _rows(storage, conn, sql, ids)}
    stored: list[bool] = []
    upserts: list[tuple[Any, ...]] = []
    for record, row in records:
        key = (record.run_id, record.attempt_id)
        ok = current.get(record.run_id) == record.attempt_id and (replace or key not in held)
        if ok:
            held.add(key)
            upserts.append(row)
        stored.append(ok)
    if upserts:
        conn.executemany(UPSERT_WORKER, upserts)
    return stored


__all__ = ["record_workers", "start_runs"]
