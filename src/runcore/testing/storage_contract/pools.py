"""The storage contract: pool limits, slot claims, waiters and releases. Part of
:class:`StorageContract`.
"""

from __future__ import annotations

import time

from runcore.events import Event, EventType
from runcore.runs import RunsFilter, RunStatus
from runcore.storage.base import InstanceStorage
from runcore.testing.storage_contract._support import (
    _cid,
    _ids,
    _in_threads,
    _run,
)


class PoolsContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    # --- pools ------------------------------------------------------------------------------

    def test_pool_limits_set_get_delete(self, storage: InstanceStorage) -> None:
        assert storage.get_pool_limits() == {}
        storage.set_pool_limit("db", 2)
        storage.set_pool_limit("api", 5)
        storage.set_pool_limit("db", 3)
        assert storage.get_pool_limits() == {"db": 3, "api": 5}
        storage.delete_pool_limit("db")
        storage.delete_pool_limit("never-set")
        assert storage.get_pool_limits() == {"api": 5}
        storage.set_pool_limit("zero", 0)
        assert storage.get_pool_limits() == {"api": 5, "zero": 0}

    def test_claim_respects_the_limit(self, storage: InstanceStorage) -> None:
        assert storage.claim_pool_slot("db", "r1", "a", limit=2)
        assert storage.claim_pool_slot("db", "r2", "a", limit=2)
        assert not storage.claim_pool_slot("db", "r3", "a", limit=2)
        assert not storage.claim_pool_slot("db", "r1", "b", limit=2)
        assert storage.claim_pool_slot("db", "r3", "a", limit=3), "the limit is the caller's"
        assert storage.claim_pool_slot("other", "r4", None, limit=1), "pools are separate"
        assert not storage.claim_pool_slot("never", "r5", None, limit=0)
        assert len(storage.get_pool_leases("db")) == 3

    def test_claim_is_idempotent_for_the_same_run_and_step(self, storage: InstanceStorage) -> None:
        assert storage.claim_pool_slot("db", "r1", "a", limit=1)
        assert storage.claim_pool_slot("db", "r1", "a", limit=1)
        assert storage.claim_pool_slot("run-pool", "r1", None, limit=1)
        assert storage.claim_pool_slot("run-pool", "r1", None, limit=1)
        leases = storage.get_pool_leases()
        assert [(lease.pool, lease.run_id, lease.step_key) for lease in leases] == [
            ("db", "r1", "a"),
            ("run-pool", "r1", None),
        ]

    def test_leases_in_claim_order_and_by_pool(self, storage: InstanceStorage) -> None:
        before = time.time()
        claims = [("db", "r2", "x"), ("api", "r1", None), ("db", "r1", "y"), ("db", "r3", "x")]
        for pool, run_id, step in claims:
            assert storage.claim_pool_slot(pool, run_id, step, limit=10)
        leases = storage.get_pool_leases()
        assert [(lease.pool, lease.run_id, lease.step_key) for lease in leases] == claims
        assert all(lease.claimed_at >= before - 1 for lease in leases)
        stamps = [lease.claimed_at for lease in leases]
        assert stamps == sorted(stamps)
        assert [lease.run_id for lease in storage.get_pool_leases("db")] == ["r2", "r1", "r3"]
        assert storage.get_pool_leases("none") == []

    def test_release_by_step_and_by_run(self, storage: InstanceStorage) -> None:
        for step in ("a", "b", "c"):
            assert storage.claim_pool_slot("db", "r1", step, limit=10)
        assert storage.claim_pool_slot("api", "r1", "a", limit=10)
        assert storage.claim_pool_slot("db", "r2", "a", limit=10)
        assert storage.release_pool_slots("r1", "b") == 1
        assert storage.release_pool_slots("r1", "b") == 0
        assert [(lease.run_id, lease.step_key) for lease in storage.get_pool_leases("db")] == [
            ("r1", "a"),
            ("r1", "c"),
            ("r2", "a"),
        ]
        assert storage.release_pool_slots("r1", "a") == 2, "one step may hold slots in two pools"
        assert storage.release_pool_slots("r1") == 1
        assert storage.release_pool_slots("nope") == 0
        assert [(lease.run_id, lease.step_key) for lease in storage.get_pool_leases()] == [
            ("r2", "a")
        ]

    def test_released_slots_can_be_claimed_again(self, storage: InstanceStorage) -> None:
        assert storage.claim_pool_slot("db", "r1", None, limit=1)
        assert not storage.claim_pool_slot("db", "r2", None, limit=1)
        storage.release_pool_slots("r1")
        assert storage.claim_pool_slot("db", "r2", None, limit=1)
        assert [lease.run_id for lease in storage.get_pool_leases()] == ["r2"]

    def test_updated_after_finds_recent_status_changes(self, storage: InstanceStorage) -> None:
        storage.add_runs(
            [
                _run(run_id=_cid(20 + i), status=RunStatus.STARTED, created_at=1_700_000_000.0 + i)
                for i in range(3)
            ]
        )
        before = time.time() - 1
        storage.transition(_cid(21), [RunStatus.STARTED], RunStatus.FAILURE)
        recent = storage.get_run_records(RunsFilter(updated_after=before))
        assert _ids(recent) == [_cid(21)]
        failed = RunsFilter(statuses=[RunStatus.FAILURE], updated_after=before)
        assert _ids(storage.get_run_records(failed)) == [_cid(21)]
        assert storage.get_run_records(RunsFilter(updated_after=time.time() + 60)) == []

    def test_waiting_claims_are_served_by_priority_then_age(self, storage: InstanceStorage) -> None:
        assert storage.claim_pool_slot("db", "holder", "s", limit=1)
        assert not storage.claim_pool_slot("db", "old", "s", limit=1, priority=0, order=1.0)
        assert not storage.claim_pool_slot("db", "young", "s", limit=1, priority=0, order=2.0)
        assert not storage.claim_pool_slot("db", "urgent", "s", limit=1, priority=5, order=3.0)
        storage.release_pool_slots("holder")
        # One slot is free, and "urgent" waits ahead of everyone else.
        assert not storage.claim_pool_slot("db", "young", "s", limit=1, priority=0, order=2.0)
        assert not storage.claim_pool_slot("db", "old", "s", limit=1, priority=0, order=1.0)
        assert storage.claim_pool_slot("db", "urgent", "s", limit=1, priority=5, order=3.0)
        storage.release_pool_slots("urgent")
        assert not storage.claim_pool_slot("db", "young", "s", limit=1, priority=0, order=2.0)
        assert storage.claim_pool_slot("db", "old", "s", limit=1, priority=0, order=1.0)
        storage.release_pool_slots("old")
        assert storage.claim_pool_slot("db", "young", "s", limit=1, priority=0, order=2.0)

    def test_a_run_that_ends_stops_waiting(self, storage: InstanceStorage) -> None:
        waiter = storage.add_run(_run(status=RunStatus.STARTED)).run_id
        assert storage.claim_pool_slot("db", "holder", "s", limit=1)
        assert not storage.claim_pool_slot("db", waiter, "s", limit=1, priority=9)
        storage.transition(waiter, [RunStatus.STARTED], RunStatus.FAILURE)
        storage.release_pool_slots("holder")
        assert storage.claim_pool_slot("db", "late", "s", limit=1)

    def test_release_stores_events_in_the_same_call(self, storage: InstanceStorage) -> None:
        r1 = storage.add_run(_run(status=RunStatus.STARTED)).run_id
        assert storage.claim_pool_slot("db", r1, "load", limit=1)
        end = Event(run_id=r1, event_type=EventType.STEP_SUCCESS, step_key="load")
        assert storage.release_pool_slots(r1, "load", events=[end]) == 1
        assert storage.get_pool_leases() == []
        (record,) = storage.get_event_records(r1)
        assert record.event == end

    def test_concurrent_claims_have_exactly_limit_winners(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        limit = 3
        for round_ in range(3):

            def claim(i: int, round_: int = round_) -> bool:
                handle = storage_handles[i % len(storage_handles)]
                return handle.claim_pool_slot("db", f"run-{round_}-{i}", "step", limit=limit)

            results = _in_threads(12, claim)
            assert sum(results) == limit
            leases = storage_handles[0].get_pool_leases("db")
            winners = sorted(f"run-{round_}-{i}" for i, won in enumerate(results) if won)
            assert sorted(lease.run_id for lease in leases) == winners
            for run_id in winners:
                storage_handles[0].release_pool_slots(run_id)

    def test_concurrent_claim_and_release_never_exceed_the_limit(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        limit = 2

        def churn(i: int) -> int:
            handle = storage_handles[i % len(storage_handles)]
            held = 0
            for j in range(15):
                if handle.claim_pool_slot("db", f"run-{i}", f"step-{j}", limit=limit):
                    held += 1
                    assert len(handle.get_pool_leases("db")) <= limit
                    handle.release_pool_slots(f"run-{i}", f"step-{j}")
            return held

        assert sum(_in_threads(8, churn)) > 0
        assert storage_handles[0].get_pool_leases("db") == []
