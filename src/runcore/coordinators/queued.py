"""Queue runs and start them, from a daemon pass, when the limits allow.

``submit_run`` only moves a run to QUEUED. A :class:`~runcore.daemon.Daemon` (or a test calling
:meth:`QueuedRunCoordinator.dequeue_pass`) reads the queue, asks the pure
:func:`~runcore.coordinators.admission.admit` which runs may start, and starts each with one
compare-and-set ``QUEUED -> STARTING`` that also claims the run's pool slots (granularity
``run``) and re-checks the run limits in the same transaction. Two daemons on one storage
therefore never start a run twice (the second one's compare-and-set finds the run no longer
QUEUED), and never together exceed a limit they each decided from a snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from runcore._log import log_event
from runcore.config import UniqueValue
from runcore.coordinators.admission import (
    ActiveRun,
    Decision,
    Hold,
    Limits,
    QueuedRun,
    TagLimit,
    admit,
    fits_run_limits,
    queue_order,
    run_limits_apply,
)
from runcore.coordinators.base import QueuingCoordinator, hand_over
from runcore.errors import ConfigError, RunNotFoundError
from runcore.events import Event, EventType
from runcore.runs import (
    IN_PROGRESS_STATUSES,
    Run,
    RunsFilter,
    RunStatus,
    priority_of,
)
from runcore.storage.base import (
    LimitCheck,
    QueuedRunRow,
    QueueReader,
    RunStart,
    WorkerRecord,
    move_run,
)

_log = logging.getLogger("runcore.coordinator")

if TYPE_CHECKING:
    from runcore.config import ConcurrencyConfig, NonIsolatedRunsConfig


def limits_from_config(
    concurrency: ConcurrencyConfig,
    non_isolated: NonIsolatedRunsConfig,
    pool_limits: dict[str, int] | None = None,
) -> Limits:
    """Build :class:`Limits` from the instance config (validated here, naming the field)."""

    runs = concurrency.runs
    if runs.max_concurrent_runs < -1:
        raise ConfigError(
            "concurrency.runs.max_concurrent_runs must be -1 (no limit) or >= 0, got "
            f"{runs.max_concurrent_runs}"
        )
    tag_limits = []
    for index, item in enumerate(runs.tag_concurrency_limits):
        where = f"concurrency.runs.tag_concurrency_limits[{index}]"
        if item.limit < 0:
            raise ConfigError(f"{where}.limit must be >= 0, got {item.limit}")
        if not item.key:
            raise ConfigError(f"{where}.key must be a non-empty string")
        per_unique = isinstance(item.value, UniqueValue) and item.value.apply_limit_per_unique_value
        value = item.value if isinstance(item.value, str) else None
        tag_limits.append(
            TagLimit(key=item.key, limit=item.limit, value=value, per_unique_value=per_unique)
        )
    pools = concurrency.pools
    if pools.default_limit is not None and pools.default_limit < 0:
        raise ConfigError(
            f"concurrency.pools.default_limit must be >= 0, got {pools.default_limit}"
        )
    if non_isolated.max_concurrent_runs < -1:
        raise ConfigError(
            "non_isolated_runs.max_concurrent_runs must be -1 (no limit) or >= 0, got "
            f"{non_isolated.max_concurrent_runs}"
        )
    return Limits(
        max_concurrent_runs=runs.max_concurrent_runs,
        tag_limits=tuple(tag_limits),
        max_non_isolated_runs=non_isolated.max_concurrent_runs,
        pool_granularity=pools.granularity,
        pool_default_limit=pools.default_limit,
        pool_limits=dict(pool_limits or {}),
    )


_NO_POOLS: frozenset[str] = frozenset()


def _admission_view(
    run_id: str,
    order: int,
    tags: Mapping[str, str],
    pools: Sequence[str],
    root_pools: Sequence[str] | None,
) -> QueuedRun:
    return QueuedRun(
        run_id=run_id,
        order=order,
        priority=priority_of(tags),
        tags=tags,
        pools=frozenset(pools) if pools else _NO_POOLS,
        root_pools=None if root_pools is None else tuple(root_pools) if root_pools else (),
    )


def _queued_from_row(row: QueuedRunRow) -> QueuedRun:
    return _admission_view(row.run_id, row.storage_id, row.tags, row.pools, row.root_pools)


def queued_run_info(run: Run, order: int) -> QueuedRun:
    """The admission view of a queued run."""
    return _admission_view(run.run_id, order, run.tags, run.pools, run.root_pools)


@attrs.frozen
class DequeueResult:
    """What one dequeue pass did."""

    launched: tuple[str, ...]
    queued: int
    lost_races: int = 0
    failed_launches: int = 0


@attrs.frozen
class QueueExplanation:
    """Why a run is (or is not) still queued.

    ``position`` counts from 1 in the order admission considers runs (priority, then
    submission). ``holds`` are the limits that hold the run, the first one first, each with
    the runs in progress that use it and the runs queued ahead that would take it first;
    ``reasons`` says the same (and more: notes, whether a daemon is alive) as sentences.
    """

    run_id: str
    status: RunStatus
    position: int | None
    queue_length: int
    reasons: tuple[str, ...]
    holds: tuple[Hold, ...] = ()

    def __str__(self) -> str:
        if self.status is not RunStatus.QUEUED:
            head = f"run {self.run_id} is {self.status.value}, not queued"
        elif self.position is None:
            head = f"run {self.run_id} is queued"
        else:
            ahead = self.position - 1
            head = (
                f"run {self.run_id} is queued, position {self.position} of "
                f"{self.queue_length} ({ahead} queued ahead of it)"
            )
        lines = [head]
        for index, reason in enumerate(self.reasons):
            first = index == 0 and self.holds
            lines.append(f"- {'held first by ' if first else ''}{reason}")
        return "\n".join(lines)


#: Runs a dequeue pass starts per storage call (one transaction, one commit, on SQL storages:
#: on a server, a commit per run would bound admissions by the disk's fsync rate).
START_BATCH = 100


class QueuedRunCoordinator(QueuingCoordinator):
    """Puts submitted runs in QUEUED; :meth:`dequeue_pass` starts them within the limits.

    ``max_launch_per_pass`` caps the runs one pass starts (None: no cap).

    Threads: none of its own. It keeps a cache of queued runs' admission data (runs are
    immutable while queued apart from tags added later, which it does not see).
    """

    def __init__(self, max_launch_per_pass: int | None = None) -> None:
        if max_launch_per_pass is not None and (
            isinstance(max_launch_per_pass, bool)
            or not isinstance(max_launch_per_pass, int)
            or max_launch_per_pass < 1
        ):
            raise ConfigError(
                "QueuedRunCoordinator max_launch_per_pass must be an int >= 1, got "
                f"{max_launch_per_pass!r}"
            )
        self.max_launch_per_pass = max_launch_per_pass
        self._cache: dict[str, QueuedRun] = {}
        self._lock = threading.Lock()
        self._warned_zero = False

    def __repr__(self) -> str:
        return f"QueuedRunCoordinator(max_launch_per_pass={self.max_launch_per_pass})"

    def submit_run(self, run: Run) -> Run:
        queued = move_run(
            self.context.storage,
            run.run_id,
            [RunStatus.NOT_STARTED],
            RunStatus.QUEUED,
            "queued; a daemon starts it when the limits allow",
        )
        return queued or self.context.storage.get_run(run.run_id) or run

    # --- the pass ---------------------------------------------------------------------------

    def limits(self) -> Limits:
        """The limits in force now (config plus the pool limits stored in storage)."""
        ctx = self.context
        return limits_from_config(
            ctx.concurrency, ctx.non_isolated_runs, ctx.storage.get_pool_limits()
        )

    def _queued(self) -> list[QueuedRun]:
        """The queue's admission data, oldest first; only runs not seen before are read."""
        storage = self.context.storage
        fresh: dict[str, QueuedRun] = {}
        with self._lock:
            first = not self._cache
        if first and isinstance(storage, QueueReader):
            # Nothing known yet: read the whole queue narrowly, in one query.
            rows = storage.get_queued_run_rows()
            fresh = {row.run_id: _queued_from_row(row) for row in rows}
            ids = list(fresh)
            missing: list[str] = []
        else:
            ids = storage.get_run_ids(RunsFilter(statuses=[RunStatus.QUEUED]), ascending=True)
            with self._lock:
                missing = [run_id for run_id in ids if run_id not in self._cache]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            if isinstance(storage, QueueReader):
                for row in storage.get_queued_run_rows(chunk):
                    fresh[row.run_id] = _queued_from_row(row)
            else:
                for record in storage.get_run_records(RunsFilter(run_ids=chunk), ascending=True):
                    if record.run.corrupt is None:  # a corrupt run is never started
                        fresh[record.run.run_id] = queued_run_info(record.run, record.storage_id)
        with self._lock:
            self._cache.update(fresh)
            wanted = set(ids)
            for stale in [k for k in self._cache if k not in wanted]:
                del self._cache[stale]
            return [self._cache[i] for i in ids if i in self._cache]

    def _active(self) -> list[ActiveRun]:
        storage = self.context.storage
        narrow = storage.get_in_progress_tags() if isinstance(storage, QueueReader) else None
        if narrow is not None:  # ids and tags only: no whole run parsed
            return [ActiveRun(run_id=run_id, tags=tags) for run_id, tags in narrow]
        return [
            ActiveRun(run_id=r.run.run_id, tags=r.run.tags)
            for r in storage.get_run_records(RunsFilter(statuses=list(IN_PROGRESS_STATUSES)))
        ]

    def _holders(self) -> dict[str, list[str]]:
        holders: dict[str, list[str]] = {}
        for lease in self.context.storage.get_pool_leases():
            who = lease.run_id if lease.step_key is None else f"{lease.run_id}/{lease.step_key}"
            holders.setdefault(lease.pool, []).append(who)
        return holders

    def decide(self, *, explain: bool = False) -> tuple[Decision, list[QueuedRun] | None, Limits]:
        """Admission over the current queue, without starting anything.

        The queue is None when it was not read (the global limit is reached, so nothing can
        start, and no explanation was asked for).
        """
        limits = self.limits()
        active = self._active()
        if (
            not explain
            and limits.max_concurrent_runs >= 0
            and len(active) >= limits.max_concurrent_runs
        ):
            # Full: nothing can start, whatever the queue holds; do not read it.
            return Decision(launch=(), held={}, pool_claims={}), None, limits
        queued = self._queued()
        decision = admit(
            queued,
            active,
            limits,
            self._holders(),
            explain=explain,
            max_launch=self.max_launch_per_pass,
        )
        return decision, queued, limits

    def dequeue_pass(self) -> DequeueResult:
        """Start every queued run the limits allow now. Safe to run from several processes."""
        decision, queued, limits = self.decide()
        if limits.max_concurrent_runs == 0 and not self._warned_zero:
            _log.warning("concurrency.runs.max_concurrent_runs is 0: no queued run will ever start")
            self._warned_zero = True
        launched: list[str] = []
        lost = failed = 0
        with self._lock:  # the admission views of the runs to start (read by this pass)
            views = {run_id: self._cache.get(run_id) for run_id in decision.launch}
        for first in range(0, len(decision.launch), START_BATCH):
            batch = [
                RunStart(
                    run_id,
                    event=Event(
                        run_id=run_id,
                        event_type=EventType.RUN_STARTING,
                        message="dequeued: the limits allow it",
                    ),
                    claim_slots=tuple(
                        (pool, limits.pool_limit(pool) or 0)
                        for pool in decision.pool_claims.get(run_id, ())
                    ),
                    limit_check=_limit_check(views[run_id] or self._view_of(run_id), limits),
                )
                for run_id in decision.launch[first : first + START_BATCH]
            ]
            done, not_started = self._start(batch)
            launched += done
            lost += not_started
            failed += len(batch) - not_started - len(done)
        return DequeueResult(
            launched=tuple(launched),
            queued=len(queued)
            if queued is not None
            else self.context.storage.count_runs(RunsFilter(statuses=[RunStatus.QUEUED])),
            lost_races=lost,
            failed_launches=failed,
        )

    def _view_of(self, run_id: str) -> QueuedRun | None:
        """The admission view of one run read from storage (when the cache lost it)."""
        run = self.context.storage.get_run(run_id)
        return queued_run_info(run, 0) if run is not None and run.corrupt is None else None

    def _start(self, batch: Sequence[RunStart]) -> tuple[list[str], int]:
        """Start a batch of runs: one ``start_runs`` (one transaction on SQL storages), then
        each started run to the launcher, then the placeholder worker records the launcher
        needs, in one ``record_workers``. Returns the runs launched and how many were not
        started (moved by someone else, or a limit filled since the pass decided); the rest
        failed to launch."""
        storage, launcher = self.context.storage, self.context.launcher
        launched: list[str] = []
        placeholders: list[WorkerRecord] = []
        runs = storage.start_runs(batch)
        for start, starting in zip(batch, runs, strict=True):
            if starting is None:
                continue
            log_event(
                _log,
                "run_admitted",
                run_id=starting.run_id,
                job=starting.job_name,
                priority=starting.priority or None,
                pools=",".join(pool for pool, _ in start.claim_slots) or None,
            )
            try:
                placeholder = hand_over(storage, launcher, starting)
            except Exception as exc:
                log_event(
                    _log,
                    "run_launch_failed",
                    logging.WARNING,
                    run_id=starting.run_id,
                    job=starting.job_name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            log_event(
                _log,
                "run_launched",
                run_id=starting.run_id,
                job=starting.job_name,
                launcher=type(launcher).__name__,
            )
            launched.append(starting.run_id)
            if placeholder is not None:
                placeholders.append(placeholder)
        if placeholders:
            storage.record_workers(placeholders, replace=False)
        return launched, sum(1 for run in runs if run is None)

    # --- explanations -----------------------------------------------------------------------

    def explain(self, run_id: str) -> QueueExplanation:
        """Why ``run_id`` has not started (see :class:`QueueExplanation`)."""
        storage = self.context.storage
        run = storage.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        decision, queued, limits = self.decide(explain=True)
        ordered = queue_order(queued or [])
        position = next((i + 1 for i, q in enumerate(ordered) if q.run_id == run_id), None)
        if run.status is not RunStatus.QUEUED or position is None:
            return QueueExplanation(run_id, run.status, None, len(ordered), ())
        holds = tuple(decision.held.get(run_id, ()))
        reasons = [str(h) for h in holds]
        if not reasons:
            reasons.append(
                "nothing holds it: the next dequeue pass starts it (is a daemon running? "
                "`runcore daemon status`)"
            )
        reasons.extend(_notes(run, limits))
        return QueueExplanation(run_id, run.status, position, len(ordered), tuple(reasons), holds)


def _limit_check(run: QueuedRun | None, limits: Limits) -> LimitCheck | None:
    """The re-check of the run limits a move to STARTING makes in its transaction, or None
    when no run limit counts the run (most queues: no cost)."""
    if run is None or not run_limits_apply(run, limits):
        return None
    return lambda in_progress: fits_run_limits(run, in_progress, limits)


def _notes(run: Run, limits: Limits) -> list[str]:
    notes = []
    if limits.max_concurrent_runs == 0:
        notes.append("note: max_concurrent_runs is 0, so no run can start")
    for pool in sorted(set(run.pools)):
        limit = limits.pool_limit(pool)
        if limit is None:
            notes.append(
                f"note: pool {pool} has no limit set and no default_limit, so it holds nothing "
                f"(set one with `runcore instance concurrency set {pool} N`)"
            )
        elif limit == 0:
            notes.append(f"note: pool {pool} has a limit of 0, so its steps can never run")
    for tag_limit in limits.tag_limits:
        if tag_limit.limit == 0 and tag_limit.bucket(run.tags) is not None:
            notes.append(f"note: {tag_limit.describe(tag_limit.bucket(run.tags) or '')} is 0")
    return notes


__all__ = [
    "DequeueResult",
    "QueueExplanation",
    "QueuedRunCoordinator",
    "limits_from_config",
    "queued_run_info",
]
