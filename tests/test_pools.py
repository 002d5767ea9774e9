"""Op-granularity pools: steps claim slots before they run, wait fairly, and always give them back.

Real runs on the thread-pool launcher, on in-memory and SQLite storage.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcore as rc

release = threading.Event()
order_lock = threading.Lock()
entered: list[str] = []


@rc.op(pool="db")
def hold_db(context: rc.OpContext) -> str:
    with order_lock:
        entered.append(context.run_id)
    if not release.wait(20):
        raise TimeoutError("test gate never opened")
    return "done"


@rc.op
def after(hold_db: str) -> str:
    return hold_db + "!"


db_job = rc.job("db_job", [hold_db, after])


@rc.op(pool="db")
def fail_db() -> None:
    raise RuntimeError("connection refused")


failing = rc.job("failing", [fail_db])


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    release.clear()
    entered.clear()
    yield
    release.set()


@pytest.fixture(params=["memory", "sqlite"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[rc.Instance]:
    storage: dict[str, Any] = (
        {"in_memory": {}}
        if request.param == "memory"
        else {"sqlite": {"path": str(tmp_path / "r.db")}}
    )
    inst = rc.Instance.from_config(
        {
            "storage": storage,
            "run_launcher": {
                "class": "runcore.launchers:ThreadPoolRunLauncher",
                "config": {"max_workers": 4},
            },
        }
    )
    with inst:
        yield inst


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def waiting_events(inst: rc.Instance, run_id: str) -> list[rc.Event]:
    return [
        e
        for e in inst.get_events(run_id, event_types=[rc.EventType.ENGINE_EVENT])
        if "waiting for a slot" in e.message
    ]


def test_steps_wait_for_a_slot_and_take_it_when_freed(instance: rc.Instance) -> None:
    instance.set_pool_limit("db", 1)
    first = instance.submit_run(db_job)
    wait_until(lambda: len(entered) == 1)
    second = instance.submit_run(db_job)
    wait_until(lambda: bool(waiting_events(instance, second.run_id)))
    (event,) = waiting_events(instance, second.run_id)
    assert event.step_key == "hold_db"
    assert f"pool 'db' (1 of 1 held: {first.run_id}/hold_db)" in event.message
    leases = instance.storage.get_pool_leases("db")
    assert [(lease.run_id, lease.step_key) for lease in leases] == [(first.run_id, "hold_db")]
    release.set()
    for run in (first, second):
        assert instance.wait_for_run(run.run_id, timeout=20).status is rc.RunStatus.SUCCESS
    assert entered == [first.run_id, second.run_id]
    assert instance.storage.get_pool_leases() == []


def test_a_failed_step_gives_its_slot_back(instance: rc.Instance) -> None:
    instance.set_pool_limit("db", 1)
    run = instance.submit_run(failing)
    assert instance.wait_for_run(run.run_id, timeout=20).status is rc.RunStatus.FAILURE
    assert instance.storage.get_pool_leases() == []
    nxt = instance.submit_run(db_job)
    release.set()
    assert instance.wait_for_run(nxt.run_id, timeout=20).status is rc.RunStatus.SUCCESS


def test_cancel_while_waiting_for_a_slot(instance: rc.Instance) -> None:
    instance.set_pool_limit("db", 1)
    first = instance.submit_run(db_job)
    wait_until(lambda: len(entered) == 1)
    second = instance.submit_run(db_job)
    wait_until(lambda: bool(waiting_events(instance, second.run_id)))
    assert instance.cancel_run(second.run_id)
    assert instance.wait_for_run(second.run_id, timeout=20).status is rc.RunStatus.CANCELED
    assert [lease.run_id for lease in instance.storage.get_pool_leases()] == [first.run_id]
    release.set()
    assert instance.wait_for_run(first.run_id, timeout=20).status is rc.RunStatus.SUCCESS
    assert instance.storage.get_pool_leases() == []
    assert entered == [first.run_id]


def test_cancel_while_holding_a_slot_frees_it(instance: rc.Instance) -> None:
    instance.set_pool_limit("db", 1)

    @rc.op(pool="db")
    def slow(context: rc.OpContext) -> None:
        entered.append(context.run_id)
        context.wait_for_cancel(20)

    job = rc.job("slow", [slow])
    run = instance.submit_run(job)
    wait_until(lambda: len(entered) == 1)
    assert instance.cancel_run(run.run_id)
    assert instance.wait_for_run(run.run_id, timeout=20).status is rc.RunStatus.CANCELED
    assert instance.storage.get_pool_leases() == []


def test_slots_go_by_priority_then_age(instance: rc.Instance) -> None:
    instance.set_pool_limit("db", 1)
    holder = instance.submit_run(db_job)
    wait_until(lambda: len(entered) == 1)
    older = instance.submit_run(db_job)
    wait_until(lambda: bool(waiting_events(instance, older.run_id)))
    urgent = instance.submit_run(db_job, tags={"runcore/priority": "5"})
    wait_until(lambda: bool(waiting_events(instance, urgent.run_id)))
    oldest_low = older
    release.set()
    for run in (holder, urgent, oldest_low):
        instance.wait_for_run(run.run_id, timeout=20)
    assert entered == [holder.run_id, urgent.run_id, oldest_low.run_id]


def test_default_limit_applies_to_pools_without_one(tmp_path: Path) -> None:
    inst = rc.Instance.from_config(
        {
            "storage": {"in_memory": {}},
            "concurrency": {"pools": {"default_limit": 1}},
            "run_launcher": {
                "class": "runcore.launchers:ThreadPoolRunLauncher",
                "config": {"max_workers": 4},
            },
        }
    )
    with inst:
        first = inst.submit_run(db_job)
        wait_until(lambda: len(entered) == 1)
        second = inst.submit_run(db_job)
        wait_until(lambda: bool(waiting_events(inst, second.run_id)))
        release.set()
        inst.wait_for_run(second.run_id, timeout=20)
        assert entered == [first.run_id, second.run_id]


def test_run_granularity_steps_claim_nothing(tmp_path: Path) -> None:
    inst = rc.Instance.from_config(
        {"storage": {"in_memory": {}}, "concurrency": {"pools": {"granularity": "run"}}}
    )
    with inst:
        inst.set_pool_limit("db", 1)
        release.set()
        run = inst.submit_run(db_job)
        assert inst.wait_for_run(run.run_id, timeout=20).status is rc.RunStatus.SUCCESS
        assert waiting_events(inst, run.run_id) == []


def test_multiprocess_steps_share_a_pool(tmp_path: Path) -> None:
    @rc.op(pool="db")
    def stamp(context: rc.OpContext) -> tuple[float, float]:
        start = time.time()
        time.sleep(0.05)
        return start, time.time()

    names = [f"stamp_{i}" for i in range(4)]
    ops = [rc.op(name=n, pool="db")(stamp.fn) for n in names]
    job = rc.job("stamps", ops, executor=rc.MultiprocessExecutor(max_concurrent=4))
    with rc.Instance.from_config({"storage": {"sqlite": {"path": str(tmp_path / "r.db")}}}) as inst:
        inst.set_pool_limit("db", 1)
        result = job.execute_in_process(instance=inst)
        assert result.success
        spans = sorted(result.output_for(n) for n in names)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end  # never two at once
        assert inst.storage.get_pool_leases() == []
