"""Queued coordination end to end, on in-memory and SQLite storage.

Most tests use ``RecordingLauncher`` (runs nothing, records launches) and drive the daemon with
``run_once()``; the pool tests at op granularity execute real runs on threads.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc
from runcore.testing import RecordingLauncher


@rc.op
def noop() -> int:
    return 1


simple = rc.job("simple", [noop])


@rc.op(pool="db")
def query() -> int:
    return 1


pooled = rc.job("pooled", [query])


def make_instance(kind: str, tmp_path: Path, **config: Any) -> rc.Instance:
    storage = (
        {"in_memory": {}} if kind == "memory" else {"sqlite": {"path": str(tmp_path / "r.db")}}
    )
    return rc.Instance.from_config(
        {
            "storage": storage,
            "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
            "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
            **config,
        }
    )


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def build(kind: str, tmp_path: Path) -> Iterator[Any]:
    made: list[rc.Instance] = []

    def factory(**config: Any) -> tuple[rc.Instance, RecordingLauncher, rc.Daemon]:
        inst = make_instance(kind, tmp_path, **config)
        made.append(inst)
        launcher = inst.run_launcher
        assert isinstance(launcher, RecordingLauncher)
        return inst, launcher, rc.Daemon(inst)

    yield factory
    for inst in made:
        inst.close()


def runs_config(**runs: Any) -> dict[str, Any]:
    return {"concurrency": {"runs": runs}}


def test_submit_queues_and_the_daemon_starts(build: Any) -> None:
    inst, launcher, daemon = build()
    run = inst.submit_run(simple)
    assert run.status is rc.RunStatus.QUEUED
    assert launcher.launched_ids == []
    daemon.run_once()
    assert launcher.launched_ids == [run.run_id]
    assert inst.get_run(run.run_id).status is rc.RunStatus.STARTING


def test_global_limit(build: Any) -> None:
    inst, launcher, daemon = build(**runs_config(max_concurrent_runs=2))
    runs = [inst.submit_run(simple) for _ in range(5)]
    daemon.run_once()
    assert launcher.launched_ids == [r.run_id for r in runs[:2]]
    why = str(inst.explain_queued(runs[2].run_id))
    assert "max_concurrent_runs: 2 of 2 in use by" in why
    assert runs[0].run_id in why
    launcher.finish(runs[0].run_id)
    daemon.run_once()
    assert launcher.launched_ids == [r.run_id for r in runs[:3]]


def test_tag_limits_with_and_without_value_and_per_unique_value(build: Any) -> None:
    inst, launcher, daemon = build(
        **runs_config(
            tag_concurrency_limits=[
                {"key": "sensor", "value": "s1", "limit": 1},
                {"key": "backfill", "limit": 1},
                {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 2},
            ]
        )
    )
    s1 = [inst.submit_run(simple, tags={"sensor": "s1"}) for _ in range(2)]
    s2 = inst.submit_run(simple, tags={"sensor": "s2"})
    bf = [inst.submit_run(simple, tags={"backfill": str(i)}) for i in range(2)]
    data = [inst.submit_run(simple, tags={"team": "data"}) for _ in range(3)]
    web = [inst.submit_run(simple, tags={"team": "web"}) for _ in range(2)]
    daemon.run_once()
    started = set(launcher.launched_ids)
    assert started == {
        s1[0].run_id,
        s2.run_id,
        bf[0].run_id,
        data[0].run_id,
        data[1].run_id,
        web[0].run_id,
        web[1].run_id,
    }
    assert "tag limit team=data (per unique value): 2 of 2 in use" in str(
        inst.explain_queued(data[2].run_id)
    )
    assert "tag limit backfill (any value): 1 of 1" in str(inst.explain_queued(bf[1].run_id))


def test_priority_and_no_head_of_line_blocking(build: Any) -> None:
    inst, launcher, daemon = build(
        **runs_config(max_concurrent_runs=3, tag_concurrency_limits=[{"key": "team", "limit": 0}])
    )
    blocked = inst.submit_run(simple, tags={"team": "x", "runcore/priority": "10"})
    low = inst.submit_run(simple)
    high = inst.submit_run(simple, tags={"runcore/priority": "5"})
    daemon.run_once()
    assert launcher.launched_ids == [high.run_id, low.run_id]
    why = str(inst.explain_queued(blocked.run_id))
    assert "position 1 of 1" in why and "the limit is 0" in why


def test_run_granularity_pools(build: Any) -> None:
    inst, launcher, daemon = build(concurrency={"pools": {"granularity": "run"}})
    inst.set_pool_limit("db", 1)
    first = inst.submit_run(pooled)
    second = inst.submit_run(pooled)
    free = inst.submit_run(simple)
    daemon.run_once()
    assert launcher.launched_ids == [first.run_id, free.run_id]
    leases = inst.storage.get_pool_leases("db")
    assert [(lease.run_id, lease.step_key) for lease in leases] == [(first.run_id, None)]
    assert f"pool db: 1 of 1 in use by {first.run_id}" in str(inst.explain_queued(second.run_id))
    launcher.finish(first.run_id, rc.RunStatus.FAILURE)
    assert inst.storage.get_pool_leases("db") == []  # released with the terminal transition
    daemon.run_once()
    assert launcher.launched_ids[-1] == second.run_id


def test_run_held_by_pool_uses_no_tag_budget(build: Any) -> None:
    inst, launcher, daemon = build(
        concurrency={
            "pools": {"granularity": "run"},
            "runs": {"tag_concurrency_limits": [{"key": "team", "limit": 1}]},
        }
    )
    inst.set_pool_limit("db", 0)
    held = inst.submit_run(pooled, tags={"team": "a"})
    other = inst.submit_run(simple, tags={"team": "a"})
    daemon.run_once()
    assert launcher.launched_ids == [other.run_id]
    why = str(inst.explain_queued(held.run_id))
    assert "pool db" in why and "limit of 0" in why


def test_pool_without_limit_is_called_out(build: Any) -> None:
    inst, _, daemon = build(**runs_config(max_concurrent_runs=0))
    run = inst.submit_run(pooled)
    daemon.run_once()
    why = str(inst.explain_queued(run.run_id))
    assert "pool db has no limit set" in why
    assert "max_concurrent_runs is 0" in why


def test_canceled_while_queued_never_starts(build: Any) -> None:
    inst, launcher, daemon = build()
    run = inst.submit_run(simple)
    assert inst.cancel_run(run.run_id) is True
    daemon.run_once()
    assert launcher.launched_ids == []
    assert inst.get_run(run.run_id).status is rc.RunStatus.CANCELED
    assert "CANCELED, not queued" in str(inst.explain_queued(run.run_id))


def test_explain_without_a_daemon_says_so(build: Any) -> None:
    inst, _, _ = build()
    run = inst.submit_run(simple)
    why = str(inst.explain_queued(run.run_id))
    assert "nothing holds it" in why
    assert "no daemon is alive" in why


def test_daemon_threads_start_runs_and_heartbeat(build: Any) -> None:
    from runcore.daemon import daemon_statuses

    inst, launcher, _ = build()
    runs = [inst.submit_run(simple) for _ in range(3)]
    with rc.Daemon(inst, dequeue_interval=0.01) as daemon:
        pause = threading.Event()
        for _ in range(500):
            if len(launcher.launched_ids) == 3 and daemon_statuses(inst.storage):
                break
            pause.wait(0.01)
        assert daemon.is_running
        (status,) = daemon_statuses(inst.storage)
        assert status.alive and status.heartbeat.daemon_id == daemon.daemon_id
    assert not daemon.is_running
    assert sorted(launcher.launched_ids) == sorted(r.run_id for r in runs)
    (status,) = daemon_statuses(inst.storage)
    assert not status.alive and status.heartbeat.info["stopped"] is True


def test_daemon_clock_is_injectable(build: Any) -> None:
    inst, _, _ = build()
    now = [1_000.0]
    daemon = rc.Daemon(inst, clock=lambda: now[0], heartbeat_interval=5)
    daemon.run_once()
    from runcore.daemon import daemon_statuses

    assert daemon_statuses(inst.storage, now=1_010.0)[0].alive
    assert not daemon_statuses(inst.storage, now=1_016.0)[0].alive


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (runs_config(max_concurrent_runs=-2), "max_concurrent_runs must be -1 (no limit) or >= 0"),
        (runs_config(max_concurrent_runs="5"), "max_concurrent_runs: expected an integer"),
        (
            runs_config(tag_concurrency_limits=[{"key": "t", "limit": -1}]),
            "tag_concurrency_limits[0].limit must be >= 0",
        ),
        (
            runs_config(tag_concurrency_limits=[{"key": "t", "limit": 1.5}]),
            "tag_concurrency_limits[0].limit: expected an integer",
        ),
        ({"concurrency": {"pools": {"granularity": "step"}}}, "granularity: expected one of"),
        ({"concurrency": {"pools": {"default_limit": -1}}}, "default_limit must be >= 0"),
        (
            {"non_isolated_runs": {"max_concurrent_runs": -5}},
            "non_isolated_runs.max_concurrent_runs",
        ),
    ],
)
def test_bad_limits_fail_at_config_time(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(rc.ConfigError) as info:
        make_instance("memory", tmp_path, **config)
    assert message in str(info.value)


def test_bad_priority_and_pool_names_fail_at_submit(build: Any) -> None:
    inst, _, _ = build()
    with pytest.raises(rc.ConfigError, match="runcore/priority: expected an integer, got 'urgent'"):
        inst.submit_run(simple, tags={"runcore/priority": "urgent"})
    with pytest.raises(rc.DefinitionError, match="pool must be a non-empty string"):
        rc.op(name="blank_pool", pool="  ")(lambda: 1)


def test_non_isolated_limit_queues_under_the_queued_coordinator(build: Any) -> None:
    inst, launcher, daemon = build()
    ni = {"runcore/isolation": "non_isolated"}
    first = inst.submit_run(simple, tags=ni)
    second = inst.submit_run(simple, tags=ni)
    daemon.run_once()
    assert launcher.launched_ids == [first.run_id]
    assert "non_isolated_runs.max_concurrent_runs: 1 of 1" in str(
        inst.explain_queued(second.run_id)
    )


def test_non_isolated_limit_refuses_under_the_default_coordinator(tmp_path: Path) -> None:
    recording = {"class": "runcore.testing:RecordingLauncher"}
    with rc.Instance.from_config({"storage": {"in_memory": {}}, "run_launcher": recording}) as inst:
        ni = {"runcore/isolation": "non_isolated"}
        first = inst.submit_run(simple, tags=ni)
        with pytest.raises(rc.RunLaunchError, match=f"in progress \\({first.run_id}\\)"):
            inst.submit_run(simple, tags=ni)


def test_non_isolated_disabled_rejects_the_tag(tmp_path: Path) -> None:
    inst = make_instance("memory", tmp_path, non_isolated_runs={"enabled": False})
    with inst, pytest.raises(rc.ConfigError, match=r"non_isolated_runs\.enabled is false"):
        inst.submit_run(simple, tags={"runcore/isolation": "non_isolated"})


def _race(db: str, barrier: Any, out: Any) -> None:
    inst = rc.Instance.from_config(
        {
            "storage": {"sqlite": {"path": db}},
            "run_coordinator": {
                "class": "runcore.coordinators:QueuedRunCoordinator",
                "config": {"max_launch_per_pass": 50},
            },
            "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
        }
    )
    launcher = inst.run_launcher
    assert isinstance(launcher, RecordingLauncher)
    daemon = rc.Daemon(inst)
    barrier.wait()
    while True:
        result = daemon.dequeue_once()
        assert result is not None
        if result.queued == 0:
            break
    out.put(launcher.launched_ids)
    inst.close()


@pytest.mark.slow
def test_two_daemons_on_one_sqlite_file_never_start_a_run_twice(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    with make_instance("sqlite", tmp_path) as inst:
        ids = [inst.submit_run(simple).run_id for _ in range(1000)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db, barrier, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    launched = [out.get(timeout=120), out.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    everything = launched[0] + launched[1]
    assert len(everything) == len(set(everything)) == 1000
    assert set(everything) == set(ids)


_LIMITED = {
    "max_concurrent_runs": 4,
    "tag_concurrency_limits": [
        {"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
    ],
}


def _limited_daemon(db: str, barrier: Any, out: Any, seed: int) -> None:
    """A daemon process: dequeue passes, and finish what it launched a little later."""
    import random
    import time

    rng = random.Random(seed)
    inst = rc.Instance.from_config(
        {
            "storage": {"sqlite": {"path": db}},
            "run_coordinator": {"class": "runcore.coordinators:QueuedRunCoordinator"},
            "run_launcher": {"class": "runcore.testing:RecordingLauncher"},
            "concurrency": {"runs": _LIMITED},
        }
    )
    launcher = inst.run_launcher
    assert isinstance(launcher, RecordingLauncher)
    daemon = rc.Daemon(inst)
    barrier.wait()
    running: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        result = daemon.dequeue_once()
        assert result is not None
        running.extend(result.launched)
        while running and rng.random() < 0.5:
            launcher.finish(running.pop(rng.randrange(len(running))))
        if result.queued == 0 and not running:
            break
        time.sleep(rng.random() * 0.003)
    out.put(launcher.launched_ids)
    inst.close()


@pytest.mark.slow
def test_daemons_racing_on_one_sqlite_file_never_exceed_a_limit(tmp_path: Path) -> None:
    """Each pass decides from its own snapshot; the STARTING transition re-checks the run
    limits in its transaction, so together the daemons never exceed one (read from the log)."""
    db = str(tmp_path / "r.db")
    with make_instance("sqlite", tmp_path, **runs_config(**_LIMITED)) as inst:
        teams = ["a", "b", "c"]
        ids = {inst.submit_run(simple, tags={"team": teams[i % 3]}).run_id for i in range(90)}
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_limited_daemon, args=(db, barrier, out, i)) for i in range(n)]
    for proc in procs:
        proc.start()
    launched = [x for _ in procs for x in out.get(timeout=180)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert sorted(launched) == sorted(ids), "every run started exactly once"

    with rc.Instance.from_config({"storage": {"sqlite": {"path": db}}}) as inst:
        inst.ensure_started()
        storage = inst.storage
        team_of = {run.run_id: run.tags["team"] for run in inst.get_runs()}
        assert all(run.status is rc.RunStatus.SUCCESS for run in inst.get_runs())
        in_progress: set[str] = set()
        peak, team_peak = 0, 0
        cursor = None
        while records := storage.get_events_after(cursor, 100):
            for record in records:
                event = record.event
                if event.event_type is rc.EventType.RUN_STARTING:
                    in_progress.add(event.run_id)
                elif event.event_type is rc.EventType.RUN_SUCCESS:
                    in_progress.discard(event.run_id)
                peak = max(peak, len(in_progress))
                per_team = [sum(team_of[r] == t for r in in_progress) for t in "abc"]
                team_peak = max(team_peak, *per_team)
            cursor = records[-1].storage_id
    assert peak == 4, "the global limit is reached and never exceeded"
    assert team_peak == 2, "the per-team limit is reached and never exceeded"
