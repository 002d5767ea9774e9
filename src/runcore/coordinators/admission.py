"""Which queued runs may start now: a pure function of the queue, what runs, and the limits.

No I/O and no clock: :func:`admit` takes plain data and returns a decision, so it is cheap to
call on every daemon pass, easy to test exhaustively, and the same code explains a held run.

Rules, applied to queued runs in order of ``runcore/priority`` (higher first), then submission:

1. ``max_concurrent_runs`` (-1: none) counts in-progress runs plus runs admitted in this pass.
2. Each tag limit counts in-progress and admitted runs that carry its key (and its value, if
   given; per distinct value with ``applyLimitPerUniqueValue``).
3. Non-isolated runs (tag ``runcore/isolation: non_isolated``) are limited separately.
4. Pools, granularity ``run``: every pool the run's steps use needs a free slot; the run takes
   one in each when admitted. Granularity ``op``: the run is held only while *every* root step
   has a pool and each of those pools is full (its steps claim slots as they are about to run).
5. A run held by any rule takes nothing: it does not use up a tag budget, a global slot or a
   pool slot, so runs behind it that are not held start (no head-of-line blocking).

A pass decides from a snapshot; several daemons may decide at once. So the move to STARTING
re-checks the run limits (1-3) inside the storage's transaction, with :func:`fits_run_limits`,
and pool slots are claimed in that same transaction: no limit is exceeded whatever the number of
daemons.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from runcore.runs import ISOLATION_TAG


@attrs.frozen
class TagLimit:
    """At most ``limit`` in-progress runs with tag ``key`` (= ``value``, when given).

    With ``per_unique_value`` the limit applies to each distinct value of ``key`` separately.
    """

    key: str
    limit: int
    value: str | None = None
    per_unique_value: bool = False

    def bucket(self, tags: Mapping[str, str]) -> str | None:
        """The counter a run with ``tags`` falls into for this limit, or None if it is exempt."""
        have = tags.get(self.key)
        if have is None:
            return None
        if self.per_unique_value:
            return have
        if self.value is not None and have != self.value:
            return None
        return ""

    def describe(self, bucket: str) -> str:
        """How this limit is named in explanations."""
        if self.per_unique_value:
            return f"tag limit {self.key}={bucket} (per unique value)"
        if self.value is not None:
            return f"tag limit {self.key}={self.value}"
        return f"tag limit {self.key} (any value)"


@attrs.frozen(kw_only=True)
class Limits:
    """Every limit admission applies. -1 means "no limit" for the run counts."""

    max_concurrent_runs: int = -1
    tag_limits: Sequence[TagLimit] = ()
    max_non_isolated_runs: int = -1
    pool_granularity: Literal["op", "run"] = "op"
    pool_default_limit: int | None = None
    pool_limits: Mapping[str, int] = attrs.field(factory=dict)

    def pool_limit(self, pool: str) -> int | None:
        """The slots of ``pool``: its own limit, else the default; None: unlimited."""
        limit = self.pool_limits.get(pool)
        return self.pool_default_limit if limit is None else limit


@attrs.frozen(kw_only=True)
class QueuedRun:
    """What admission needs to know about a queued run."""

    run_id: str
    order: int
    priority: int = 0
    tags: Mapping[str, str] = attrs.field(factory=dict)
    pools: frozenset[str] = frozenset()
    root_pools: tuple[str, ...] | None = None  # None: some root step uses no pool

    @property
    def non_isolated(self) -> bool:
        """Whether the run is tagged to run non-isolated."""
        return self.tags.get(ISOLATION_TAG) == "non_isolated"


@attrs.frozen(kw_only=True)
class ActiveRun:
    """What admission needs to know about an in-progress run."""

    run_id: str
    tags: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def non_isolated(self) -> bool:
        """Whether the run is tagged to run non-isolated."""
        return self.tags.get(ISOLATION_TAG) == "non_isolated"


def _some(names: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@attrs.frozen
class Hold:
    """One reason a run cannot start now: the limit's name, its use, and who holds it.

    ``holders`` are in progress (runs, or ``run/step`` holding a pool slot); ``ahead`` are
    runs still queued that come first in the queue and would take the limit's last places in
    this pass (so they hold it too, though they have not started).
    """

    limit: str
    used: int
    allowed: int
    holders: tuple[str, ...] = ()
    ahead: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.allowed == 0:
            return f"{self.limit}: the limit is 0, so nothing it covers can start"
        if not self.ahead:
            text = f"{self.limit}: {self.used} of {self.allowed} in use"
            return text + (f" by {_some(self.holders)}" if self.holders else "")
        text = f"{self.limit}: {self.used} of {self.allowed} taken"
        if self.holders:
            text += f"; running: {_some(self.holders)}"
        text += f"; queued ahead of it (they start first): {_some(self.ahead)}"
        return text


@attrs.frozen
class Decision:
    """The runs to start, in order, and the reasons for each run held (if asked for)."""

    launch: tuple[str, ...]
    held: Mapping[str, tuple[Hold, ...]]
    pool_claims: Mapping[
        str, tuple[str, ...]
    ]  # run id -> pools it takes a slot in (granularity run)


def queue_order(runs: Iterable[QueuedRun]) -> list[QueuedRun]:
    """Queued runs in the order admission considers them: priority, then submission."""
    return sorted(runs, key=_order_key)


def _order_key(run: QueuedRun) -> tuple[int, int]:
    return (-run.priority, run.order)


class _Counter:
    """Usage of one limit: how many, and by whom (for explanations): in progress, or
    admitted ahead in this pass (``ahead``)."""

    __slots__ = ("ahead", "count", "holders")

    def __init__(self) -> None:
        self.count = 0
        self.holders: list[str] = []
        self.ahead: list[str] = []

    def add(self, who: str, *, ahead: bool = False) -> None:
        self.count += 1
        (self.ahead if ahead else self.holders).append(who)

    def hold(self, limit: str, allowed: int) -> Hold:
        return Hold(limit, self.count, allowed, tuple(self.holders), tuple(self.ahead))


class _Ledger:
    """What is in use during one admission pass: runs, tag buckets, non-isolated, pools."""

    def __init__(self, limits: Limits, pool_holders: Mapping[str, Sequence[str]]) -> None:
        self.limits = limits
        self.running = _Counter()
        self.non_isolated = _Counter()
        self.tags: list[defaultdict[str, _Counter]] = [
            defaultdict(_Counter) for _ in limits.tag_limits
        ]
        self.limits_by_key: dict[str, list[int]] = defaultdict(list)
        for index, tag_limit in enumerate(limits.tag_limits):
            self.limits_by_key[tag_limit.key].append(index)
        self.pools: dict[str, _Counter] = defaultdict(_Counter)
        for pool, holders in pool_holders.items():
            for holder in holders:
                self.pools[pool].add(holder)

    def buckets(self, tags: Mapping[str, str]) -> list[tuple[int, str]]:
        """The (tag limit, bucket) pairs a run with ``tags`` counts against."""
        out = []
        for key in tags.keys() & self.limits_by_key.keys():
            for index in self.limits_by_key[key]:
                bucket = self.limits.tag_limits[index].bucket(tags)
                if bucket is not None:
                    out.append((index, bucket))
        return out

    def count(
        self,
        run_id: str,
        non_isolated: bool,
        buckets: Sequence[tuple[int, str]],
        *,
        ahead: bool = False,
    ) -> None:
        """Record a run as in progress (already running, or admitted in this pass: ``ahead``)."""
        self.running.add(run_id, ahead=ahead)
        if non_isolated:
            self.non_isolated.add(run_id, ahead=ahead)
        for index, bucket in buckets:
            self.tags[index][bucket].add(run_id, ahead=ahead)

    def global_hold(self) -> Hold | None:
        """The hold of ``max_concurrent_runs``, if it is reached."""
        limit = self.limits.max_concurrent_runs
        if limit >= 0 and self.running.count >= limit:
            return self.running.hold("max_concurrent_runs", limit)
        return None

    def holds(self, run: QueuedRun, buckets: Sequence[tuple[int, str]]) -> list[Hold]:
        """Every limit other than the global one that holds ``run`` now."""
        reasons: list[Hold] = []
        limit = self.limits.max_non_isolated_runs
        if run.non_isolated and limit >= 0 and self.non_isolated.count >= limit:
            reasons.append(self.non_isolated.hold("non_isolated_runs.max_concurrent_runs", limit))
        for index, bucket in buckets:
            tag_limit = self.limits.tag_limits[index]
            counter = self.tags[index][bucket]
            if counter.count >= tag_limit.limit:
                reasons.append(counter.hold(tag_limit.describe(bucket), tag_limit.limit))
        if self.limits.pool_granularity == "run":
            reasons.extend(self.pool_hold(p) for p in sorted(run.pools) if self.pool_full(p))
        elif run.root_pools and all(self.pool_full(p) for p in run.root_pools):
            reasons.extend(self.pool_hold(p) for p in sorted(set(run.root_pools)))
        return reasons

    def blocked(self, run: QueuedRun, buckets: Sequence[tuple[int, str]]) -> bool:
        """Whether any limit other than the global one holds ``run``: :meth:`holds` without
        building the reasons, for passes that only decide."""
        limit = self.limits.max_non_isolated_runs
        if run.non_isolated and limit >= 0 and self.non_isolated.count >= limit:
            return True
        for index, bucket in buckets:
            if self.tags[index][bucket].count >= self.limits.tag_limits[index].limit:
                return True
        if self.limits.pool_granularity == "run":
            return any(self.pool_full(p) for p in run.pools)
        return bool(run.root_pools) and all(self.pool_full(p) for p in run.root_pools or ())

    def pool_full(self, pool: str) -> bool:
        """Whether every slot of ``pool`` is taken."""
        limit = self.limits.pool_limit(pool)
        if limit is None:
            return False
        counter = self.pools.get(pool)
        return (counter.count if counter else 0) >= limit

    def pool_hold(self, pool: str) -> Hold:
        """The hold of a full pool."""
        limit = self.limits.pool_limit(pool)
        assert limit is not None
        counter = self.pools.get(pool) or _Counter()
        note = "" if pool in self.limits.pool_limits else " (the default limit; none set for it)"
        return counter.hold(f"pool {pool}{note}", limit)

    def take_pools(self, run: QueuedRun) -> tuple[str, ...]:
        """At granularity ``run``, take a slot in each limited pool the run uses."""
        if self.limits.pool_granularity != "run":
            return ()
        take = tuple(p for p in sorted(run.pools) if self.limits.pool_limit(p) is not None)
        for pool in take:
            self.pools[pool].add(run.run_id, ahead=True)
        return take


def run_limits_apply(run: QueuedRun, limits: Limits) -> bool:
    """Whether any run limit (1-3 of the module docstring) counts ``run``: else starting it
    needs no re-check."""
    if limits.max_concurrent_runs >= 0:
        return True
    if run.non_isolated and limits.max_non_isolated_runs >= 0:
        return True
    return any(limit.bucket(run.tags) is not None for limit in limits.tag_limits)


def fits_run_limits(
    run: QueuedRun, in_progress: Iterable[Mapping[str, str]], limits: Limits
) -> bool:
    """Whether ``run`` may start beside runs in progress with the tags ``in_progress``: the run
    limits (1-3) only; pools are the storage's slot claims. What a move to STARTING checks in
    its transaction (see the module docstring)."""
    ledger = _Ledger(attrs.evolve(limits, pool_limits={}, pool_default_limit=None), {})
    for index, tags in enumerate(in_progress):
        ledger.count(str(index), tags.get(ISOLATION_TAG) == "non_isolated", ledger.buckets(tags))
    return ledger.global_hold() is None and not ledger.blocked(run, ledger.buckets(run.tags))


def admit(
    queued: Sequence[QueuedRun],
    active: Sequence[ActiveRun],
    limits: Limits,
    pool_holders: Mapping[str, Sequence[str]] | None = None,
    *,
    explain: bool = False,
    max_launch: int | None = None,
) -> Decision:
    """Decide which of ``queued`` start now (see the module docstring for the rules).

    ``pool_holders`` maps each pool to its current slot holders (``"run"`` or ``"run/step"``).
    With ``explain`` every held run gets all of its reasons; otherwise held runs are only
    counted, which keeps a pass over a long, blocked queue cheap. ``max_launch`` caps how many
    runs one pass starts.
    """
    ledger = _Ledger(limits, pool_holders or {})
    for active_run in active:
        ledger.count(active_run.run_id, active_run.non_isolated, ledger.buckets(active_run.tags))
    launch: list[str] = []
    held: dict[str, tuple[Hold, ...]] = {}
    claims: dict[str, tuple[str, ...]] = {}
    for run in queue_order(queued):
        if max_launch is not None and len(launch) >= max_launch:
            if not explain:
                break
            held[run.run_id] = (Hold("this pass's launch budget", len(launch), max_launch),)
            continue
        full = ledger.global_hold()
        if full is not None and not explain:
            break  # nothing else can start in this pass either: stop early on a full instance
        buckets = ledger.buckets(run.tags)
        if not explain:
            if ledger.blocked(run, buckets):
                continue
        else:
            reasons = ledger.holds(run, buckets)
            if full is not None:
                reasons.insert(0, full)
            if reasons:
                held[run.run_id] = tuple(reasons)
                continue
        launch.append(run.run_id)
        ledger.count(run.run_id, run.non_isolated, buckets, ahead=True)
        take = ledger.take_pools(run)
        if take:
            claims[run.run_id] = take
    return Decision(launch=tuple(launch), held=held, pool_claims=claims)
