"""The pure admission function: limits, tag limits, pools, priority, no head-of-line blocking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runcore.coordinators.admission import ActiveRun, Limits, QueuedRun, TagLimit, admit


def q(run_id: str, order: int, priority: int = 0, **tags: str) -> QueuedRun:
    return QueuedRun(run_id=run_id, order=order, priority=priority, tags=tags)


def test_no_limits_admits_everything_in_priority_then_submission_order() -> None:
    queued = [q("a", 1), q("b", 2, priority=5), q("c", 3), q("d", 4, priority=5)]
    decision = admit(queued, [], Limits())
    assert decision.launch == ("b", "d", "a", "c")


def test_global_limit_counts_active_runs() -> None:
    decision = admit(
        [q("a", 1), q("b", 2), q("c", 3)], [ActiveRun(run_id="x")], Limits(max_concurrent_runs=2)
    )
    assert decision.launch == ("a",)


def test_zero_global_limit_starts_nothing_and_says_so() -> None:
    decision = admit([q("a", 1)], [], Limits(max_concurrent_runs=0), explain=True)
    assert decision.launch == ()
    assert "the limit is 0" in str(decision.held["a"][0])


def test_tag_limit_with_value_and_without() -> None:
    limits = Limits(tag_limits=[TagLimit("sensor", 1, value="s1"), TagLimit("backfill", 2)])
    queued = [
        q("a", 1, sensor="s1"),
        q("b", 2, sensor="s1"),
        q("c", 3, sensor="s2"),
        q("d", 4, backfill="x"),
        q("e", 5, backfill="y"),
        q("f", 6, backfill="z"),
    ]
    decision = admit(queued, [], limits, explain=True)
    assert decision.launch == ("a", "c", "d", "e")
    assert str(decision.held["b"][0]) == (
        "tag limit sensor=s1: 1 of 1 taken; queued ahead of it (they start first): a"
    )
    assert str(decision.held["f"][0]) == (
        "tag limit backfill (any value): 2 of 2 taken; queued ahead of it (they start first): d, e"
    )


def test_per_unique_value_limit() -> None:
    limits = Limits(tag_limits=[TagLimit("team", 2, per_unique_value=True)])
    active = [ActiveRun(run_id="x", tags={"team": "data"})]
    queued = [
        q("a", 1, team="data"),
        q("b", 2, team="data"),
        q("c", 3, team="web"),
        q("d", 4, team="web"),
        q("e", 5, team="web"),
    ]
    decision = admit(queued, active, limits, explain=True)
    assert decision.launch == ("a", "c", "d")
    assert (
        str(decision.held["b"][0])
        == "tag limit team=data (per unique value): 2 of 2 taken; running: x; "
        "queued ahead of it (they start first): a"
    )


def test_held_run_does_not_block_those_behind_it() -> None:
    limits = Limits(max_concurrent_runs=3, tag_limits=[TagLimit("team", 0, value="data")])
    queued = [q("a", 1, priority=9, team="data"), q("b", 2), q("c", 3)]
    decision = admit(queued, [], limits)
    assert decision.launch == ("b", "c")


def test_run_held_by_a_pool_uses_no_tag_budget() -> None:
    limits = Limits(tag_limits=[TagLimit("team", 1)], pool_granularity="run", pool_limits={"db": 1})
    queued = [
        QueuedRun(run_id="a", order=1, tags={"team": "t"}, pools=frozenset({"db"})),
        QueuedRun(run_id="b", order=2, tags={"team": "t"}),
    ]
    decision = admit(queued, [], limits, {"db": ["z"]}, explain=True)
    assert decision.launch == ("b",)
    assert str(decision.held["a"][0]) == "pool db: 1 of 1 in use by z"


def test_run_granularity_takes_a_slot_in_each_pool() -> None:
    limits = Limits(
        pool_granularity="run", pool_limits={"db": 2, "api": 1}, pool_default_limit=None
    )
    queued = [
        QueuedRun(run_id="a", order=1, pools=frozenset({"db", "api"})),
        QueuedRun(run_id="b", order=2, pools=frozenset({"db"})),
        QueuedRun(run_id="c", order=3, pools=frozenset({"api"})),
        QueuedRun(run_id="d", order=4, pools=frozenset({"free"})),
    ]
    decision = admit(queued, [], limits, explain=True)
    assert decision.launch == ("a", "b", "d")
    assert decision.pool_claims == {"a": ("api", "db"), "b": ("db",)}
    assert "pool api: 1 of 1 taken; queued ahead of it (they start first): a" in str(
        decision.held["c"][0]
    )


def test_default_pool_limit_applies_to_pools_without_one() -> None:
    limits = Limits(pool_granularity="run", pool_default_limit=1)
    queued = [QueuedRun(run_id=r, order=i, pools=frozenset({"x"})) for i, r in enumerate("ab")]
    decision = admit(queued, [], limits, explain=True)
    assert decision.launch == ("a",)
    assert "(the default limit; none set for it)" in str(decision.held["b"][0])


def test_op_granularity_holds_only_when_every_root_pool_is_full() -> None:
    limits = Limits(pool_granularity="op", pool_limits={"db": 1, "api": 1})
    holders = {"db": ["x/load"]}
    queued = [
        QueuedRun(run_id="only_db", order=1, pools=frozenset({"db"}), root_pools=("db",)),
        QueuedRun(
            run_id="db_and_api", order=2, pools=frozenset({"db", "api"}), root_pools=("api", "db")
        ),
        QueuedRun(run_id="root_without_pool", order=3, pools=frozenset({"db"}), root_pools=None),
    ]
    decision = admit(queued, [], limits, holders, explain=True)
    assert decision.launch == ("db_and_api", "root_without_pool")
    assert str(decision.held["only_db"][0]) == "pool db: 1 of 1 in use by x/load"
    assert decision.pool_claims == {}


def test_non_isolated_limit() -> None:
    limits = Limits(max_non_isolated_runs=1)
    ni = {"runcore/isolation": "non_isolated"}
    active = [ActiveRun(run_id="x", tags=ni)]
    queued = [QueuedRun(run_id="a", order=1, tags=ni), q("b", 2)]
    decision = admit(queued, active, limits, explain=True)
    assert decision.launch == ("b",)
    assert str(decision.held["a"][0]).startswith("non_isolated_runs.max_concurrent_runs: 1 of 1")


def test_explain_lists_every_reason() -> None:
    limits = Limits(max_concurrent_runs=1, tag_limits=[TagLimit("team", 1)])
    active = [ActiveRun(run_id="x", tags={"team": "t"})]
    decision = admit([q("a", 1, team="t")], active, limits, explain=True)
    assert [h.limit for h in decision.held["a"]] == [
        "max_concurrent_runs",
        "tag limit team (any value)",
    ]


def test_max_launch_caps_a_pass() -> None:
    decision = admit([q(str(i), i) for i in range(10)], [], Limits(), max_launch=3)
    assert decision.launch == ("0", "1", "2")


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.integers(-2, 2),
            st.sampled_from(["a", "b", "c", None]),
            st.sampled_from(["p", "q", None]),
        ),
        max_size=30,
    ),
    active=st.lists(st.sampled_from(["a", "b", "c", None]), max_size=5),
    global_limit=st.integers(-1, 6),
    team_limit=st.integers(0, 3),
    pool_limit=st.integers(0, 2),
    granularity=st.sampled_from(["op", "run"]),
)
def test_admission_never_exceeds_a_limit(
    runs: list[tuple[int, str | None, str | None]],
    active: list[str | None],
    global_limit: int,
    team_limit: int,
    pool_limit: int,
    granularity: str,
) -> None:
    limits = Limits(
        max_concurrent_runs=global_limit,
        tag_limits=[TagLimit("team", team_limit, per_unique_value=True)],
        pool_granularity=granularity,  # type: ignore[arg-type]
        pool_limits={"p": pool_limit, "q": pool_limit},
    )
    queued = [
        QueuedRun(
            run_id=f"r{i}",
            order=i,
            priority=prio,
            tags={"team": team} if team else {},
            pools=frozenset({pool}) if pool else frozenset(),
            root_pools=(pool,) if pool else None,
        )
        for i, (prio, team, pool) in enumerate(runs)
    ]
    running = [
        ActiveRun(run_id=f"x{i}", tags={"team": t} if t else {}) for i, t in enumerate(active)
    ]
    decision = admit(queued, running, limits)
    launched = [r for r in queued if r.run_id in decision.launch]
    if global_limit >= 0:
        assert len(launched) <= max(0, global_limit - len(running))
    for team in "abc":
        already = sum(1 for t in active if t == team)
        new = sum(1 for r in launched if r.tags.get("team") == team)
        assert new == 0 or already + new <= team_limit
    if granularity == "run":
        for pool in "pq":
            assert sum(1 for r in launched if pool in r.pools) <= pool_limit
    # Priority order: a launched run never has a lower priority than a held run with no reason
    # of its own; check order of launch follows the queue order.
    order = [r.run_id for r in sorted(queued, key=lambda r: (-r.priority, r.order))]
    positions = [order.index(r) for r in decision.launch]
    assert positions == sorted(positions)
