"""The storage contract: launch attempts, worker records and daemon heartbeats. Part of
:class:`StorageContract`.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from runcore.runs import Run
from runcore.storage.base import DaemonHeartbeat, InstanceStorage, WorkerRecord
from runcore.testing.storage_contract._support import (
    _S,
    _in_threads,
    _run,
)


class WorkersContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    # --- launch attempts and worker records ------------------------------------------------

    @staticmethod
    def _starting(storage: InstanceStorage) -> Run:
        run = storage.add_run(_run(status=_S.QUEUED))
        starting = storage.transition(run.run_id, [_S.QUEUED], _S.STARTING)
        assert starting is not None
        return starting

    @staticmethod
    def _worker(run: Run, attempt: str | None = None, **kwargs: Any) -> WorkerRecord:
        return WorkerRecord(
            run_id=run.run_id,
            attempt_id=attempt or run.attempt_id or "",
            kind=kwargs.pop("kind", "process"),
            host=kwargs.pop("host", "host-a"),
            handle=kwargs.pop("handle", {"pid": 1234, "create_time": 1700000000.25}),
            started_at=kwargs.pop("started_at", 1700000001.5),
            **kwargs,
        )

    def test_every_move_to_starting_is_a_new_attempt(self, storage: InstanceStorage) -> None:
        first = self._starting(storage)
        assert first.attempt_id
        back = storage.transition(first.run_id, [_S.STARTING], _S.QUEUED)
        assert back is not None and back.attempt_id is None  # given up
        second = storage.transition(first.run_id, [_S.QUEUED], _S.STARTING)
        assert second is not None and second.attempt_id not in (None, first.attempt_id)
        chosen = storage.add_run(_run(status=_S.QUEUED))
        given = storage.transition(chosen.run_id, [_S.QUEUED], _S.STARTING, attempt_id="a1")
        assert given is not None and given.attempt_id == "a1"

    def test_a_transition_for_an_old_attempt_does_nothing(self, storage: InstanceStorage) -> None:
        first = self._starting(storage)
        storage.transition(first.run_id, [_S.STARTING], _S.QUEUED)
        storage.transition(first.run_id, [_S.QUEUED], _S.STARTING)
        stale = storage.transition(
            first.run_id, [_S.STARTING], _S.STARTED, attempt_id=first.attempt_id
        )
        assert stale is None
        assert storage.get_run(first.run_id).status is _S.STARTING  # type: ignore[union-attr]
        current = storage.get_run(first.run_id)
        assert current is not None
        started = storage.transition(
            first.run_id, [_S.STARTING], _S.STARTED, attempt_id=current.attempt_id
        )
        assert started is not None and started.status is _S.STARTED

    def test_back_to_queued_frees_the_runs_slots(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        assert storage.transition(run.run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("db", 1)])
        assert [lease.run_id for lease in storage.get_pool_leases("db")] == [run.run_id]
        storage.transition(run.run_id, [_S.STARTING], _S.QUEUED)
        assert storage.get_pool_leases("db") == []

    def test_giving_up_an_attempt_has_exactly_one_winner(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        run = self._starting(storage_handles[0])

        def give_up(i: int) -> bool:
            handle = storage_handles[i % len(storage_handles)]
            moved = handle.transition(
                run.run_id, [_S.STARTING], _S.QUEUED, attempt_id=run.attempt_id
            )
            return moved is not None

        assert sum(_in_threads(8, give_up)) == 1

    def test_worker_records_round_trip(self, storage: InstanceStorage) -> None:
        run = self._starting(storage)
        assert storage.get_worker_record(run.run_id) is None
        record = self._worker(run, handle={"pid": 42, "create_time": 1.5, "nested": {"a": [1]}})
        assert storage.record_worker(record) is True
        assert storage.get_worker_record(run.run_id) == record
        replaced = self._worker(run, kind="thread", host="host-b", handle={})
        assert storage.record_worker(replaced) is True
        other = self._starting(storage)
        assert storage.get_worker_records([run.run_id, other.run_id, "unknown"]) == {
            run.run_id: replaced
        }

    def test_a_worker_is_recorded_only_for_the_current_attempt(
        self, storage: InstanceStorage
    ) -> None:
        run = self._starting(storage)
        assert storage.record_worker(self._worker(run, attempt="not-the-attempt")) is False
        queued = storage.add_run(_run(status=_S.QUEUED))
        assert storage.record_worker(self._worker(queued, attempt="x")) is False
        storage.transition(run.run_id, [_S.STARTING], _S.QUEUED)
        assert storage.record_worker(self._worker(run)) is False  # the attempt was given up
        assert storage.get_worker_records([run.run_id, queued.run_id]) == {}
        missing = _run()
        assert storage.record_worker(self._worker(missing, attempt="a")) is False
        quick = self._starting(storage)  # a worker may finish the run before it is recorded
        storage.transition(quick.run_id, [_S.STARTING], _S.STARTED)
        storage.transition(quick.run_id, [_S.STARTED], _S.SUCCESS)
        assert storage.record_worker(self._worker(quick)) is True

    def test_a_worker_record_can_be_written_only_if_none_is_there(
        self, storage: InstanceStorage
    ) -> None:
        run = self._starting(storage)
        launcher = self._worker(run, kind="ecs", handle={"task_arn": "arn:x"})
        assert storage.record_worker(launcher) is True
        assert storage.record_worker(self._worker(run), replace=False) is False
        assert storage.get_worker_record(run.run_id) == launcher
        other = self._starting(storage)
        assert storage.record_worker(self._worker(other), replace=False) is True

    def test_worker_heartbeats_use_the_storage_clock(self, storage: InstanceStorage) -> None:
        run = self._starting(storage)
        storage.record_worker(self._worker(run))
        before = time.time()
        assert storage.worker_heartbeat(run.run_id, run.attempt_id or "") is True
        beat = storage.get_worker_record(run.run_id)
        assert beat is not None and beat.heartbeat_at is not None
        assert before - 1 <= beat.heartbeat_at <= time.time() + 1
        assert storage.worker_heartbeat(run.run_id, "another-attempt") is False
        assert storage.worker_heartbeat("no-such-run", "a") is False

    def test_a_move_to_started_stamps_the_workers_first_heartbeat(
        self, storage: InstanceStorage
    ) -> None:
        if not storage.stamps_start_as_heartbeat:
            pytest.skip("the storage does not stamp a start as a heartbeat")
        run = self._starting(storage)
        storage.record_worker(self._worker(run))
        old = self._starting(storage)
        storage.record_worker(self._worker(old, attempt="an-older-attempt"))
        started = storage.transition(
            run.run_id, [_S.STARTING], _S.STARTED, attempt_id=run.attempt_id
        )
        assert started is not None and started.started_at is not None
        record = storage.get_worker_record(run.run_id)
        assert record is not None and record.heartbeat_at == started.started_at
        # only the current attempt's record: another attempt's worker gave no sign of life
        assert storage.transition(old.run_id, [_S.STARTING], _S.STARTED) is not None
        other = storage.get_worker_record(old.run_id)
        assert other is None or other.heartbeat_at is None

    def test_delete_run_removes_its_worker_record(self, storage: InstanceStorage) -> None:
        run = self._starting(storage)
        storage.record_worker(self._worker(run))
        storage.delete_run(run.run_id)
        assert storage.get_worker_record(run.run_id) is None

    # --- heartbeats -------------------------------------------------------------------------

    def test_heartbeats_keep_the_latest_per_daemon(self, storage: InstanceStorage) -> None:
        assert storage.get_daemon_heartbeats() == []
        storage.add_daemon_heartbeat(
            DaemonHeartbeat(daemon_id="d1", daemon_type="dequeue", timestamp=1.0)
        )
        storage.add_daemon_heartbeat(
            DaemonHeartbeat(
                daemon_id="d2", daemon_type="monitor", timestamp=2.0, info={"runs": [1, 2]}
            )
        )
        latest = DaemonHeartbeat(
            daemon_id="d1",
            daemon_type="dequeue",
            timestamp=3.5,
            info={"host": "a", "pid": 12, "nested": {"ok": True}},
        )
        storage.add_daemon_heartbeat(latest)
        beats = {beat.daemon_id: beat for beat in storage.get_daemon_heartbeats()}
        assert beats == {
            "d1": latest,
            "d2": DaemonHeartbeat(
                daemon_id="d2", daemon_type="monitor", timestamp=2.0, info={"runs": [1, 2]}
            ),
        }
