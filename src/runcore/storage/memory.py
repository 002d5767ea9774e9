"""In-memory storage: the default of ``Instance.ephemeral()`` and of unit tests.

Real, not a stub: it keeps the whole contract (compare-and-set transitions, slot leases,
ordering). Runs and events are held as immutable objects under one lock; nothing is serialized,
and nothing outlives the process.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence

import attrs

from runcore.errors import DuplicateRunError, InstanceClosedError, RunNotFoundError
from runcore.events import Event, EventRecord, EventType
from runcore.runs import Run, RunRecord, RunsFilter, RunStatus, check_transition
from runcore.storage.base import (
    WAITER_TTL,
    DaemonHeartbeat,
    InstanceStorage,
    LimitCheck,
    SlotLease,
    WorkerRecord,
)
from runcore.storage.rows import (
    apply_transition,
    attempt_allows,
    now,
    status_event,
)


class InMemoryStorage(InstanceStorage):
    """Everything in dicts and lists, guarded by one re-entrant lock."""

    shareable = False
    stamps_start_as_heartbeat = True

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self._runs: dict[str, RunRecord] = {}
        self._run_seq = 0
        self._events: dict[str, list[EventRecord]] = {}
        self._event_seq = 0
        # Every run's events in storage-id order, for the cross-run cursor; ids beside them
        # for bisecting.
        self._all_events: list[EventRecord] = []
        self._all_event_ids: list[int] = []
        self._pool_limits: dict[str, int] = {}
        self._leases: list[SlotLease] = []
        # (pool, run, step) -> ((-priority, order, step), last attempt)
        self._waiters: dict[tuple[str, str, str | None], tuple[tuple[int, float, str], float]] = {}
        self._heartbeats: dict[str, DaemonHeartbeat] = {}
        self._workers: dict[str, WorkerRecord] = {}

    def close(self) -> None:
        self._closed = True

    def to_config(self) -> dict[str, object]:
        if type(self) is InMemoryStorage:
            return {"in_memory": {}}
        cls = type(self)  # a subclass is a plug-in
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": {}}

    def _check_open(self) -> None:
        if self._closed:
            raise InstanceClosedError("this InMemoryStorage is closed")

    # --- runs -------------------------------------------------------------------------------

    def add_run(self, run: Run) -> Run:
        with self._lock:
            self._check_open()
            if run.run_id in self._runs:
                raise DuplicateRunError(run.run_id)
            self._run_seq += 1
            self._runs[run.run_id] = RunRecord(self._run_seq, run)
            return run

    def add_runs(self, runs: Sequence[Run]) -> None:
        with self._lock:
            self._check_open()
            seen: set[str] = set()
            for run in runs:
                if run.run_id in self._runs or run.run_id in seen:
                    raise DuplicateRunError(run.run_id)
                seen.add(run.run_id)
            for run in runs:
                self.add_run(run)

    def get_run(self, run_id: str) -> Run | None:
        self._check_open()
        record = self._runs.get(run_id)
        return record.run if record is not None else None

    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        with self._lock:
            self._check_open()
            records = list(self._runs.values())
        if not ascending:
            records.reverse()
        out: list[RunRecord] = []
        if limit is not None and limit <= 0:
            return out
        for record in records:
            if after_storage_id is not None and (
                record.storage_id <= after_storage_id
                if ascending
                else record.storage_id >= after_storage_id
            ):
                continue
            if filters is None or filters.matches(record.run):
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def count_runs(self, filters: RunsFilter | None = None) -> int:
        return len(self.get_run_records(filters))

    def add_run_tags(self, run_id: str, tags: Mapping[str, str]) -> Run:
        with self._lock:
            self._check_open()
            record = self._runs.get(run_id)
            if record is None:
                raise RunNotFoundError(run_id)
            run = attrs.evolve(record.run, tags={**record.run.tags, **tags})
            self._runs[run_id] = RunRecord(record.storage_id, run)
            return run

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
        check_transition(from_statuses, to_status)
        with self._lock:
            self._check_open()
            record = self._runs.get(run_id)
            if record is None:
                raise RunNotFoundError(run_id)
            if record.run.status not in from_statuses:
                return None
            if not attempt_allows(record.run, to_status, attempt_id):
                return None
            if limit_check is not None and not limit_check(
                [r.run.tags for r in self._runs.values() if r.run.status.is_in_progress]
            ):
                return None
            if not all(self._can_claim(pool, run_id, None, limit) for pool, limit in claim_slots):
                return None
            for pool, limit in claim_slots:
                self._claim(pool, run_id, None, limit)
            ts = now()
            run = apply_transition(
                record.run, to_status, ts, failure_reason, event, attempt_id=attempt_id
            )
            self._runs[run_id] = RunRecord(record.storage_id, run)
            self._append_event(status_event(run, to_status, event, ts))
            worker = self._workers.get(run_id)
            if (  # a move to STARTED is the worker's first sign of life
                to_status is RunStatus.STARTED
                and worker is not None
                and worker.attempt_id == (run.attempt_id or "")
            ):
                self._workers[run_id] = attrs.evolve(worker, heartbeat_at=ts)
            if to_status.is_terminal or to_status is RunStatus.QUEUED:
                self._release(run_id, None)
            return run

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._check_open()
            self._runs.pop(run_id, None)
            if self._events.pop(run_id, None):
                self._all_events = [r for r in self._all_events if r.event.run_id != run_id]
                self._all_event_ids = [r.storage_id for r in self._all_events]
            self._workers.pop(run_id, None)
            self._release(run_id, None)

    # --- events -----------------------------------------------------------------------------

    def _append_event(self, event: Event) -> int:
        self._event_seq += 1
        record = EventRecord(self._event_seq, event)
        self._events.setdefault(event.run_id, []).append(record)
        self._all_events.append(record)
        self._all_event_ids.append(record.storage_id)
        return self._event_seq

    def store_event(self, event: Event) -> int:
        with self._lock:
            self._check_open()
            return self._append_event(event)

    def store_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            self._check_open()
            for event in events:
                self._append_event(event)

    def get_event_records(
        self,
        run_id: str,
        *,
        after_storage_id: int | None = None,
        limit: int | None = None,
        event_types: Sequence[EventType] | None = None,
    ) -> list[EventRecord]:
        with self._lock:
            self._check_open()
            records = list(self._events.get(run_id, ()))
        if after_storage_id is not None:
            records = [r for r in records if r.storage_id > after_storage_id]
        if event_types is not None:
            wanted = set(event_types)
            records = [r for r in records if r.event.event_type in wanted]
        return records[:limit] if limit is not None else records

    def get_events_after(self, cursor: int | None, limit: int) -> list[EventRecord]:
        with self._lock:  # ids are handed out and appended under it: nothing commits late
            self._check_open()
            start = 0 if cursor is None else bisect.bisect_right(self._all_event_ids, cursor)
            return self._all_events[start : start + max(limit, 0)]

    # --- pools ------------------------------------------------------------------------------

    def set_pool_limit(self, pool: str, limit: int) -> None:
        with self._lock:
            self._check_open()
            self._pool_limits[pool] = limit

    def get_pool_limits(self) -> dict[str, int]:
        with self._lock:
            self._check_open()
            return dict(self._pool_limits)

    def delete_pool_limit(self, pool: str) -> None:
        with self._lock:
            self._check_open()
            self._pool_limits.pop(pool, None)

    def _can_claim(self, pool: str, run_id: str, step_key: str | None, limit: int) -> bool:
        held = [lease for lease in self._leases if lease.pool == pool]
        if any(lease.run_id == run_id and lease.step_key == step_key for lease in held):
            return True
        return len(held) < limit

    def _claim(self, pool: str, run_id: str, step_key: str | None, limit: int) -> bool:
        if not self._can_claim(pool, run_id, step_key, limit):
            return False
        if not any(
            lease.pool == pool and lease.run_id == run_id and lease.step_key == step_key
            for lease in self._leases
        ):
            self._leases.append(SlotLease(pool, run_id, step_key, now()))
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
        with self._lock:
            self._check_open()
            me = (pool, run_id, step_key)
            ts = now()
            held = [lease for lease in self._leases if lease.pool == pool]
            if any(lease.run_id == run_id and lease.step_key == step_key for lease in held):
                self._waiters.pop(me, None)
                return True
            rank = (-priority, order, step_key or "")
            ahead = sum(
                1
                for (w_pool, w_run, w_step), (w_rank, seen) in self._waiters.items()
                if w_pool == pool
                and (w_run, w_step) != (run_id, step_key)
                and seen > ts - WAITER_TTL
                and w_rank < rank
            )
            if len(held) + ahead >= limit:
                self._waiters[me] = (rank, ts)
                return False
            self._waiters.pop(me, None)
            self._leases.append(SlotLease(pool, run_id, step_key, ts))
            return True

    def _release(self, run_id: str, step_key: str | None) -> int:
        for key in [k for k in self._waiters if k[1] == run_id and step_key in (None, k[2])]:
            del self._waiters[key]
        keep = [
            lease
            for lease in self._leases
            if lease.run_id != run_id or (step_key is not None and lease.step_key != step_key)
        ]
        freed = len(self._leases) - len(keep)
        self._leases = keep
        return freed

    def release_pool_slots(
        self, run_id: str, step_key: str | None = None, *, events: Sequence[Event] = ()
    ) -> int:
        with self._lock:
            self._check_open()
            for event in events:
                self._append_event(event)
            return self._release(run_id, step_key)

    def get_pool_leases(self, pool: str | None = None) -> list[SlotLease]:
        with self._lock:
            self._check_open()
            return [lease for lease in self._leases if pool is None or lease.pool == pool]

    # --- workers ----------------------------------------------------------------------------

    def record_worker(self, record: WorkerRecord, *, replace: bool = True) -> bool:
        with self._lock:
            self._check_open()
            stored = self._runs.get(record.run_id)
            if stored is None or stored.run.attempt_id != record.attempt_id:
                return False
            existing = self._workers.get(record.run_id)
            if not replace and existing is not None and existing.attempt_id == record.attempt_id:
                return False
            self._workers[record.run_id] = record
            return True

    def get_worker_records(self, run_ids: Sequence[str]) -> dict[str, WorkerRecord]:
        with self._lock:
            self._check_open()
            return {rid: self._workers[rid] for rid in run_ids if rid in self._workers}

    def worker_heartbeat(self, run_id: str, attempt_id: str) -> bool:
        with self._lock:
            self._check_open()
            record = self._workers.get(run_id)
            if record is None or record.attempt_id != attempt_id:
                return False
            self._workers[run_id] = attrs.evolve(record, heartbeat_at=now())
            return True

    # --- heartbeats -------------------------------------------------------------------------

    def add_daemon_heartbeat(self, heartbeat: DaemonHeartbeat) -> None:
        with self._lock:
            self._check_open()
            self._heartbeats[heartbeat.daemon_id] = heartbeat

    def get_daemon_heartbeats(self) -> list[DaemonHeartbeat]:
        with self._lock:
            self._check_open()
            return list(self._heartbeats.values())
