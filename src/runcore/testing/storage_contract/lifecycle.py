"""The storage contract: deleting runs, starting and closing a storage. Part of
:class:`StorageContract`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from runcore.errors import (
    InstanceClosedError,
    RunNotFoundError,
)
from runcore.events import Event, EventType
from runcore.runs import RunsFilter
from runcore.storage.base import DaemonHeartbeat, InstanceStorage
from runcore.testing.storage_contract._support import (
    _S,
    _ids,
    _in_threads,
    _run,
)


class LifecycleContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    # --- delete -----------------------------------------------------------------------------

    def test_delete_run_removes_run_events_tags_and_slots(self, storage: InstanceStorage) -> None:
        doomed = storage.add_run(_run(status=_S.STARTED, tags={"team": "a"}))
        kept = storage.add_run(_run(status=_S.STARTED, tags={"team": "a"}))
        for run in (doomed, kept):
            storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG))
            assert storage.claim_pool_slot("db", run.run_id, "s", limit=5)
        storage.delete_run(doomed.run_id)
        assert storage.get_run(doomed.run_id) is None
        assert storage.get_event_records(doomed.run_id) == []
        assert _ids(storage.get_run_records(RunsFilter(tags={"team": "a"}))) == [kept.run_id]
        assert storage.count_runs() == 1
        assert [lease.run_id for lease in storage.get_pool_leases()] == [kept.run_id]
        assert len(storage.get_event_records(kept.run_id)) == 1
        storage.delete_run(doomed.run_id)
        storage.delete_run("never-existed")
        with pytest.raises(RunNotFoundError):
            storage.transition(doomed.run_id, [_S.STARTED], _S.SUCCESS)

    # --- lifecycle --------------------------------------------------------------------------

    def test_start_is_idempotent(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run())
        storage.start()
        assert storage.get_run(run.run_id) == run

    def test_a_closed_storage_raises(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        storage.close()
        storage.close()
        calls: list[Callable[[], object]] = [
            lambda: storage.add_run(_run()),
            lambda: storage.add_runs([_run()]),
            lambda: storage.get_run(run.run_id),
            storage.get_run_records,
            storage.count_runs,
            lambda: storage.add_run_tags(run.run_id, {"a": "b"}),
            lambda: storage.transition(run.run_id, [_S.QUEUED], _S.STARTING),
            lambda: storage.delete_run(run.run_id),
            lambda: storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG)),
            lambda: storage.store_events([Event(run_id=run.run_id, event_type=EventType.LOG)]),
            lambda: storage.get_event_records(run.run_id),
            lambda: storage.set_pool_limit("db", 1),
            storage.get_pool_limits,
            lambda: storage.delete_pool_limit("db"),
            lambda: storage.claim_pool_slot("db", run.run_id, None, limit=1),
            lambda: storage.release_pool_slots(run.run_id),
            storage.get_pool_leases,
            lambda: storage.add_daemon_heartbeat(
                DaemonHeartbeat(daemon_id="d", daemon_type="t", timestamp=1.0)
            ),
            storage.get_daemon_heartbeats,
        ]
        for call in calls:
            with pytest.raises(InstanceClosedError):
                call()

    def test_closing_while_other_threads_work(self, storage: InstanceStorage) -> None:
        """Calls racing ``close()`` either succeed or raise InstanceClosedError, nothing else."""
        run = storage.add_run(_run(status=_S.QUEUED))
        closed = threading.Event()

        def work(i: int) -> int:
            if i == 0:
                time.sleep(0.05)
                storage.close()
                closed.set()
                return 0
            done = 0
            while True:
                try:
                    storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG))
                    storage.get_run(run.run_id)
                except InstanceClosedError:
                    return done
                done += 1
                if closed.is_set() and done > 10_000:
                    pytest.fail("calls keep succeeding long after close()")

        _in_threads(5, work)
        with pytest.raises(InstanceClosedError):
            storage.get_run(run.run_id)
