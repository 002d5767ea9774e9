"""The storage contract: batched writes (``start_runs``, ``record_workers``), each item still a
compare-and-set of its own. Part of :class:`StorageContract`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from runcore.events import Event, EventType
from runcore.runs import RunsFilter
from runcore.storage.base import InstanceStorage, QueueReader, RunStart, WorkerRecord
from runcore.testing.storage_contract._support import _S, _in_threads, _run


class BatchesContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    def test_start_runs_starts_each_queued_run_in_order(self, storage: InstanceStorage) -> None:
        queued = [storage.add_run(_run(status=_S.QUEUED, tags={"i": str(i)})) for i in range(3)]
        running = storage.add_run(_run(status=_S.STARTED))
        event = Event(run_id=queued[1].run_id, event_type=EventType.RUN_STARTING, message="go")
        starts = [
            RunStart(queued[0].run_id),
            RunStart(running.run_id),
            RunStart(queued[1].run_id, event=event),
            RunStart("no-such-run"),
            RunStart(queued[2].run_id),
        ]
        started = storage.start_runs(starts)
        assert [run.run_id if run else None for run in started] == [
            queued[0].run_id,
            None,
            queued[1].run_id,
            None,
            queued[2].run_id,
        ]
        for run in queued:
            stored = storage.get_run(run.run_id)
            assert stored is not None and stored.status is _S.STARTING
            assert stored.attempt_id is not None and stored.tags == run.tags
            (record,) = storage.get_event_records(run.run_id)
            assert record.event.event_type is EventType.RUN_STARTING
        assert storage.get_event_records(queued[1].run_id)[0].event.message == "go"
        assert len({run.attempt_id for run in started if run is not None}) == 3
        assert storage.get_run(running.run_id) == running
        assert storage.start_runs([]) == []

    def test_start_runs_starts_a_run_listed_twice_once(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        first, second = storage.start_runs([RunStart(run.run_id), RunStart(run.run_id)])
        assert first is not None and second is None
        assert len(storage.get_event_records(run.run_id)) == 1

    def test_start_runs_claims_slots_within_the_pool_limit(self, storage: InstanceStorage) -> None:
        runs = [storage.add_run(_run(status=_S.QUEUED)) for _ in range(3)]
        started = storage.start_runs(
            [RunStart(run.run_id, claim_slots=(("db", 2),)) for run in runs]
        )
        assert [run is not None for run in started] == [True, True, False]
        leases = storage.get_pool_leases("db")
        assert [lease.run_id for lease in leases] == [runs[0].run_id, runs[1].run_id]
        assert storage.get_run(runs[2].run_id) == runs[2]
        assert storage.get_event_records(runs[2].run_id) == []

    def test_a_limit_check_counts_the_runs_started_before_it_in_the_batch(
        self, storage: InstanceStorage
    ) -> None:
        storage.add_run(_run(status=_S.STARTED, tags={"team": "a"}))
        runs = [storage.add_run(_run(status=_S.QUEUED)) for _ in range(3)]
        seen: list[list[Mapping[str, str]]] = []

        def check(in_progress: Sequence[Mapping[str, str]]) -> bool:
            seen.append(list(in_progress))
            return len(in_progress) < 3

        started = storage.start_runs([RunStart(run.run_id, limit_check=check) for run in runs])
        assert [run is not None for run in started] == [True, True, False]
        assert [len(tags) for tags in seen] == [1, 2, 3]
        assert {"team": "a"} in seen[0]
        assert storage.count_runs(RunsFilter(statuses=[_S.STARTING])) == 2

    def test_racing_batches_start_each_run_exactly_once(
        self, storage: InstanceStorage, storage_handles: list[InstanceStorage]
    ) -> None:
        runs = [storage.add_run(_run(status=_S.QUEUED)) for _ in range(30)]

        def race(i: int) -> list[str]:
            mine = runs[i * 5 :] + runs[: i * 5]  # overlapping batches, in other orders
            handle = storage_handles[i % len(storage_handles)]
            won: list[str] = []
            for first in range(0, len(mine), 10):
                batch = [RunStart(run.run_id, claim_slots=(("db", 20),)) for run in mine]
                started = handle.start_runs(batch[first : first + 10])
                won += [run.run_id for run in started if run is not None]
            return won

        wins = [run_id for won in _in_threads(3, race) for run_id in won]
        assert len(wins) == 20, "the pool holds 20: no more, and no run twice"
        assert len(set(wins)) == 20
        assert {lease.run_id for lease in storage.get_pool_leases("db")} == set(wins)
        for run in runs:
            events = storage.get_event_records(run.run_id)
            assert len(events) == (1 if run.run_id in wins else 0)

    def test_record_workers_records_each_for_its_current_attempt(
        self, storage: InstanceStorage
    ) -> None:
        runs = [storage.add_run(_run(status=_S.QUEUED)) for _ in range(3)]
        started = [run for run in storage.start_runs([RunStart(r.run_id) for r in runs]) if run]
        assert len(started) == 3
        records = [
            WorkerRecord(run_id=run.run_id, attempt_id=run.attempt_id or "", kind="k", host="h")
            for run in started
        ]
        stale = WorkerRecord(run_id=runs[0].run_id, attempt_id="old", kind="k", host="h")
        assert storage.record_workers([*records[:2], stale]) == [True, True, False]
        again = [
            WorkerRecord(run_id=r.run_id, attempt_id=r.attempt_id, kind="x", host="h")
            for r in records
        ]
        assert storage.record_workers(again, replace=False) == [False, False, True]
        found = storage.get_worker_records([run.run_id for run in runs])
        assert [found[run.run_id].kind for run in runs] == ["k", "k", "x"]
        assert storage.record_workers([]) == []

    def test_in_progress_tags_read_narrowly_match_the_runs(self, storage: InstanceStorage) -> None:
        if not isinstance(storage, QueueReader):
            pytest.skip("the storage does not read the queue narrowly (QueueReader)")
        runs = [
            storage.add_run(_run(status=status, tags={"s": status.value}))
            for status in (_S.QUEUED, _S.STARTING, _S.STARTED, _S.CANCELING, _S.SUCCESS)
        ]
        narrow = storage.get_in_progress_tags()
        if narrow is None:
            pytest.skip("the storage cannot read in-progress tags narrowly")
        assert sorted(narrow) == sorted((run.run_id, run.tags) for run in runs[1:4])


__all__ = ["BatchesContract"]
