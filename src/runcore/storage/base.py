"""The storage interface, split by concern: runs, events, pools, workers, daemon heartbeats.

A backend implements :class:`InstanceStorage`, which is those five small interfaces behind one
object, so that one transaction can span them: a status change is written together with its
event and, when the run ends, with the release of every pool slot it holds.

Contract every backend keeps (``runcore.testing.StorageContract`` checks it):

* Thread-safe: any method may be called from any thread, at the same time.
* ``transition`` is an atomic compare-and-set: of two callers moving the same run out of the
  same status, exactly one succeeds.
* ``storage_id`` values (runs and events) increase in insertion order, and the cross-run
  event cursor (``get_events_after``) is gap-free: an event committed after a reader passed
  its position is never skipped.
* Terminal runs never change status again.
* Every move to STARTING starts a new launch *attempt* (``Run.attempt_id``), a move back to
  QUEUED ends it; a transition given an ``attempt_id`` happens only while that attempt is the
  run's current one, and a worker record is stored only for the current attempt.
* Nothing is pickled: runs and events are stored as JSON.
* ``start()`` does the I/O (opening, schema checks); the constructor does none. After
  ``close()``, calls raise :class:`~runcore.errors.InstanceClosedError`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Self, TypeAlias

import attrs

from runcore.errors import DuplicateRunError, RunNotFoundError
from runcore.events import STATUS_EVENT_TYPES, ErrorInfo, Event, EventRecord, EventType
from runcore.runs import FailureKind, Run, RunRecord, RunsFilter, RunStatus

#: Seconds after its last attempt that a waiting slot claim stops holding its place in line.
WAITER_TTL = 30.0

#: A limit check a transition makes inside its transaction (see :meth:`RunStorage.transition`):
#: given the tags of every run in progress, whether the run may move.
LimitCheck: TypeAlias = Callable[[Sequence[Mapping[str, str]]], bool]


@attrs.frozen
class RunStart:
    """One run of a batch :meth:`RunStorage.start_runs` moves from QUEUED to STARTING, with
    what :meth:`RunStorage.transition` would be given for it."""

    run_id: str
    event: Event | None = None
    claim_slots: tuple[tuple[str, int], ...] = ()
    limit_check: LimitCheck | None = attrs.field(default=None, eq=False)


@attrs.frozen
class SlotLease:
    """A pool slot held by a run (and, at op granularity, one of its steps)."""

    pool: str
    run_id: str
    step_key: str | None
    claimed_at: float


@attrs.frozen(kw_only=True)
class WorkerRecord:
    """Who executes a run's current attempt, and how its launcher finds it again.

    Written by the launcher that started the worker, never from user input (tags are the
    user's; this is runcore's). ``kind`` names the launcher's kind of worker (``process``,
    ``thread``, ``code_server``, ...); ``handle`` is opaque JSON only that launcher reads (a
    process: its pid and start time; a code server: its address). ``heartbeat_at`` is the last
    sign of life the worker itself wrote (storage clock), ``None`` before the first.
    """

    run_id: str
    attempt_id: str
    kind: str
    host: str
    handle: dict[str, Any] = attrs.field(factory=dict)
    started_at: float = attrs.field(factory=time.time)
    heartbeat_at: float | None = None


@attrs.frozen(kw_only=True)
class DaemonHeartbeat:
    """A daemon's proof of life: who, when, and free-form JSON-able detail."""

    daemon_id: str
    daemon_type: str
    timestamp: float
    info: dict[str, Any] = attrs.field(factory=dict)


class RunStorage(ABC):
    """Runs and their status."""

    @abstractmethod
    def add_run(self, run: Run) -> Run:
        """Store a new run. Raises :class:`~runcore.errors.DuplicateRunError` for a known id."""

    def add_runs(self, runs: Sequence[Run]) -> None:
        """Store many new runs, all or none (backends make this one transaction).

        Raises :class:`~runcore.errors.DuplicateRunError` (storing none of them) if an id is
        already stored or appears twice in ``runs``. This default checks first and then adds
        one by one; a backend with transactions overrides it.
        """
        seen: set[str] = set()
        for run in runs:
            if run.run_id in seen or self.get_run(run.run_id) is not None:
                raise DuplicateRunError(run.run_id)
            seen.add(run.run_id)
        for run in runs:
            self.add_run(run)

    @abstractmethod
    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""

    @abstractmethod
    def get_run_records(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching ``filters``, newest first (oldest first with ``ascending``).

        ``after_storage_id`` pages: with ``ascending`` it returns runs stored after it, else
        runs stored before it.
        """

    def get_run_ids(
        self,
        filters: RunsFilter | None = None,
        limit: int | None = None,
        *,
        ascending: bool = False,
        after_storage_id: int | None = None,
    ) -> list[str]:
        """The ids of the runs :meth:`get_run_records` would return, in the same order.

        For callers that need only the ids (a queue scan); backends answer it without
        decoding runs.
        """
        records = self.get_run_records(
            filters, limit, ascending=ascending, after_storage_id=after_storage_id
        )
        return [record.run.run_id for record in records]

    @abstractmethod
    def count_runs(self, filters: RunsFilter | None = None) -> int:
        """How many runs match ``filters``."""

    @abstractmethod
    def add_run_tags(self, run_id: str, tags: Mapping[str, str]) -> Run:
        """Add or overwrite tags of a run; returns the updated run."""

    @abstractmethod
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
        """Move a run to ``to_status`` if it is in one of ``from_statuses``; atomic.

        Writes, in one transaction: the new status and times (``started_at`` on STARTED,
        ``ended_at`` on a terminal status), the status event (``event``, or a plain one of
        the matching type; either way stamped with the transition's time, by :meth:`clock`'s
        clock), and on a terminal status or back to QUEUED the release of every pool slot the
        run holds. Returns the updated run, or ``None`` if the run was not in
        ``from_statuses`` (someone else moved it first).

        Attempts: a move to STARTING sets a new ``attempt_id`` on the run (the one given, else
        a fresh one). Any other move given an ``attempt_id`` happens only if it is the run's
        current attempt (else ``None``), so a worker of an attempt given up cannot start the
        run, and of two daemons giving up the same attempt only one does.

        ``claim_slots`` is a list of ``(pool, limit)``: a run-level slot (step ``None``) in
        each pool is claimed in the same transaction, as :meth:`claim_pool_slot` would. If any
        of them cannot be had, nothing is written and ``None`` is returned: the run stays
        where it was, as if someone else had moved it first.

        ``limit_check`` (admission's run limits: ``max_concurrent_runs``, tag limits) is
        called in the same transaction, after the status and attempt checks and before any
        slot is claimed, with the tags of every run in progress (STARTING, STARTED,
        CANCELING; a run whose stored data cannot be read counts with no tags). If it returns
        ``False`` nothing is written and ``None`` is returned. The storage serializes it with
        every other transition given one, so the limits it checks hold with any number of
        daemons on one storage.

        Raises :class:`~runcore.errors.IllegalTransitionError` before any I/O when the move
        is not in :data:`~runcore.runs.LEGAL_TRANSITIONS`, and
        :class:`~runcore.errors.RunNotFoundError` for an unknown run.
        """

    def start_runs(self, starts: Sequence[RunStart]) -> list[Run | None]:
        """Move each run of ``starts`` from QUEUED to STARTING, in order, as :meth:`transition`
        would (its event, a new attempt, its run-level pool slots, its limit check); the
        started runs, with ``None`` where a run was not started: no longer QUEUED, unknown,
        unreadable, being moved by another writer right now, or held by its limit check or a
        pool.

        Each start is still a compare-and-set of its own: one that is not started does not
        stop the others, and a limit check counts, among the runs in progress, those started
        before it in the batch. A backend may (SQL ones do) write the whole batch in one
        transaction; this default moves the runs one by one.
        """
        started: list[Run | None] = []
        queued, starting = [RunStatus.QUEUED], RunStatus.STARTING
        for start in starts:
            event, claims = start.event, start.claim_slots
            try:
                if start.limit_check is None:  # a storage written before limit_check works
                    run = self.transition(
                        start.run_id, queued, starting, event=event, claim_slots=claims
                    )
                else:
                    run = self.transition(
                        start.run_id,
                        queued,
                        starting,
                        event=event,
                        claim_slots=claims,
                        limit_check=start.limit_check,
                    )
            except RunNotFoundError:
                run = None
            started.append(run)
        return started

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Delete a run, its tags, events and slots. Unknown ids are ignored."""


class EventStorage(ABC):
    """Each run's event log."""

    @abstractmethod
    def store_event(self, event: Event) -> int:
        """Append one event; returns its storage id."""

    def store_events(self, events: Sequence[Event]) -> None:
        """Append many events (backends make this one transaction)."""
        for event in events:
            self.store_event(event)

    @abstractmethod
    def get_event_records(
        self,
        run_id: str,
        *,
        after_storage_id: int | None = None,
        limit: int | None = None,
        event_types: Sequence[EventType] | None = None,
    ) -> list[EventRecord]:
        """A run's events in the order stored, after a cursor, optionally of some types only."""

    @abstractmethod
    def get_events_after(self, cursor: int | None, limit: int) -> list[EventRecord]:
        """Events of every run stored after ``cursor`` (a ``storage_id``; ``None``: from the
        first), in ``storage_id`` order, at most ``limit`` (an int >= 0).

        Gap-free: a reader that passes the last id it got as the next ``cursor`` sees every
        event exactly once, even with writers in other threads and processes. An event is
        never returned before every event with a lower id is visible, so one committed late
        cannot fall behind a reader. Events of a deleted run are gone from the sequence.
        """


class PoolStorage(ABC):
    """Named concurrency pools: their limits and the slots runs hold in them."""

    @abstractmethod
    def set_pool_limit(self, pool: str, limit: int) -> None:
        """Set (or replace) the number of slots of ``pool``."""

    @abstractmethod
    def get_pool_limits(self) -> dict[str, int]:
        """Every pool with an explicit limit."""

    @abstractmethod
    def delete_pool_limit(self, pool: str) -> None:
        """Forget the explicit limit of ``pool`` (it falls back to the default limit)."""

    @abstractmethod
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
        """Take a slot of ``pool`` for (run, step) if one is free for it; atomic.

        Claiming a slot the same (run, step) already holds succeeds without taking another.
        A claim that fails is remembered as *waiting*; free slots go to waiting claims by
        ``priority`` (higher first), then ``order`` (lower first: the run's creation time),
        so a claim succeeds only if fewer waiters rank ahead of it than slots are free.
        Waiters that have not retried for :data:`WAITER_TTL` seconds no longer count, and a
        run's waiters are dropped when it ends.
        """

    @abstractmethod
    def release_pool_slots(
        self, run_id: str, step_key: str | None = None, *, events: Sequence[Event] = ()
    ) -> int:
        """Free the slots of a run (of one of its steps, if ``step_key``); returns how many.

        ``events`` (the step's end, usually) are stored in the same transaction.
        """

    @abstractmethod
    def get_pool_leases(self, pool: str | None = None) -> list[SlotLease]:
        """Slots held now, in the order claimed, of one pool or all."""


class WorkerStorage(ABC):
    """Per run, the record of the worker executing its current attempt (see
    :class:`WorkerRecord`): what the monitor judges health by, and what ``terminate`` uses."""

    #: Whether a run's move to STARTED also sets its current attempt's worker record's
    #: ``heartbeat_at`` to the transition's time, in the same write: the worker's first sign
    #: of life then costs no write of its own, and a run worker's heartbeats start one
    #: interval later (:mod:`runcore.worker.heartbeats`). A storage without it gets a first
    #: heartbeat at once instead.
    stamps_start_as_heartbeat: ClassVar[bool] = False

    @abstractmethod
    def record_worker(self, record: WorkerRecord, *, replace: bool = True) -> bool:
        """Store ``record`` as its run's worker, replacing any earlier one; atomic.

        With ``replace=False`` a record already stored for the same attempt is kept (and
        ``False`` returned): how a run worker records itself only if its launcher has not.

        Only while ``record.attempt_id`` is the run's current attempt (whatever its status:
        a quick worker may have finished the run already); otherwise nothing is written and
        ``False`` is returned: the attempt was given up (the run went back to the queue) and
        its worker will not be allowed to start the run.
        """

    def record_workers(
        self, records: Sequence[WorkerRecord], *, replace: bool = True
    ) -> list[bool]:
        """:meth:`record_worker` of each of ``records``, in order; whether each was stored.
        A backend may (SQL ones do) write them in one transaction."""
        return [self.record_worker(record, replace=replace) for record in records]

    @abstractmethod
    def get_worker_records(self, run_ids: Sequence[str]) -> dict[str, WorkerRecord]:
        """The worker records of those of ``run_ids`` that have one, by run id."""

    def get_worker_record(self, run_id: str) -> WorkerRecord | None:
        """The worker record of one run, or ``None``."""
        return self.get_worker_records([run_id]).get(run_id)

    @abstractmethod
    def worker_heartbeat(self, run_id: str, attempt_id: str) -> bool:
        """Set the worker record's ``heartbeat_at`` to now (the storage's clock), if the run's
        record is of ``attempt_id``; returns whether it was."""


class HeartbeatStorage(ABC):
    """Daemon heartbeats: the latest one per daemon id."""

    @abstractmethod
    def add_daemon_heartbeat(self, heartbeat: DaemonHeartbeat) -> None:
        """Record ``heartbeat`` as the latest of its daemon."""

    @abstractmethod
    def get_daemon_heartbeats(self) -> list[DaemonHeartbeat]:
        """The latest heartbeat of every daemon that has sent one."""


class QueuedRunRow(NamedTuple):
    """What admission reads of a queued run: no more than it needs. (A named tuple: a
    daemon's first pass reads one per queued run, tens of thousands.)"""

    storage_id: int
    run_id: str
    tags: dict[str, str]
    pools: list[str]
    root_pools: list[str] | None


class QueueReader(ABC):
    """Optional ability of a storage: read queued runs narrowly, for a daemon's admission.

    A storage without it still works: the coordinator then reads whole runs.
    """

    @abstractmethod
    def get_queued_run_rows(self, run_ids: Sequence[str] | None = None) -> list[QueuedRunRow]:
        """QUEUED runs (of ``run_ids``, if given), oldest first."""

    def get_in_progress_tags(self) -> list[tuple[str, dict[str, str]]] | None:
        """The id and tags of every run in progress (STARTING, STARTED, CANCELING; a run whose
        stored data cannot be read: no tags), or ``None`` where the storage cannot tell (the
        coordinator then reads whole runs)."""
        return None


class StorageNotifier(ABC):
    """An optional ability of a storage: telling every process that uses it, soon after it
    happens, that a run was queued or ended (PostgreSQL's LISTEN/NOTIFY). Daemons wake their
    dequeue pass and ``wait_for_run`` checks again on it; polling stays the fallback, so a
    notification lost (a dropped connection) only costs a poll interval."""

    @abstractmethod
    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(kind)`` (``"queued"`` or ``"ended"``) from a listener thread after
        each such commit by any process; returns the function that unsubscribes. ``callback``
        must be quick and must not raise (it is not awaited)."""


class InstanceStorage(RunStorage, EventStorage, PoolStorage, WorkerStorage, HeartbeatStorage):
    """Everything an instance remembers, behind one object.

    ``shareable`` says whether other processes can open the same storage (a file or a server),
    which decides whether runs can be sent to worker processes.
    """

    shareable: bool = False

    def start(self) -> None:
        """Open connections and check the schema. Idempotent."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reclaim_pool_slots(self) -> int:
        """Free every slot whose owner run has ended or no longer exists; returns how many.

        Terminal transitions already free a run's slots; this is the safety net the daemon
        runs on every monitoring pass. Backends may answer it in one statement.
        """
        freed = 0
        for run_id in dict.fromkeys(lease.run_id for lease in self.get_pool_leases()):
            run = self.get_run(run_id)
            if run is None or run.status.is_terminal:
                freed += self.release_pool_slots(run_id)
        return freed

    def clock(self) -> float:
        """Now, in Unix seconds, by the clock every process sharing this storage agrees on:
        what heartbeat ages, timeouts and cursors over ``updated_at`` are judged by. This
        host's clock by default; a database server's where hosts share one (PostgreSQL)."""
        return time.time()

    def check_identity(self) -> None:
        """Raise :class:`~runcore.errors.StorageError` if this storage is no longer the one
        :meth:`start` opened (its file deleted or replaced, or unreadable). The daemon calls
        it every pass; it must be cheap. The default has nothing to check."""

    def migrate(self) -> tuple[int, int] | None:
        """Upgrade a stored schema to this runcore's, in place; returns (from, to) versions.

        ``None`` for a storage with no schema (in memory). Refuses, untouched, a newer schema
        or data that is not runcore's.
        """
        return None

    def to_config(self) -> dict[str, Any] | None:
        """The ``storage:`` config another process would use to open this storage, if any:
        a short form (``{"sqlite": {...}}``) or a plug-in's ``{"class": "module:Class",
        "config": {...}}``. Worker processes open their storage from it, so it must give back
        an equivalent storage (the same class, on the same data)."""
        return None

    def default_outputs_dir(self) -> str | None:
        """Where runs keep step outputs when the config names no ``outputs.path``: a
        directory beside the storage's data, or ``None`` for in memory."""
        return None


def move_run(
    storage: RunStorage,
    run_id: str,
    from_statuses: Sequence[RunStatus],
    to_status: RunStatus,
    message: str = "",
    *,
    error: BaseException | ErrorInfo | None = None,
    kind: FailureKind | None = None,
    data: Mapping[str, Any] | None = None,
    attempt_id: str | None = None,
) -> Run | None:
    """``storage.transition`` with its status event made from a message: the one way runcore
    moves a run with a reason. For a failure, ``error`` (an exception is captured) and ``kind``
    go on the event, and so on the run (``failure_reason``, ``failure_kind``)."""
    info = ErrorInfo.from_exception(error) if isinstance(error, BaseException) else error
    event_data = dict(data or {})
    if kind is not None:
        event_data["failure_kind"] = kind.value
    event = Event(
        run_id=run_id,
        event_type=STATUS_EVENT_TYPES[to_status],
        message=message,
        error=info,
        data=event_data,
    )
    return storage.transition(run_id, from_statuses, to_status, event=event, attempt_id=attempt_id)


__all__ = [
    "DaemonHeartbeat",
    "EventStorage",
    "HeartbeatStorage",
    "InstanceStorage",
    "LimitCheck",
    "PoolStorage",
    "RunStart",
    "RunStorage",
    "SlotLease",
    "StorageNotifier",
    "WorkerRecord",
    "WorkerStorage",
]
