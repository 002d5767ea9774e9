"""The storage contract: event logs and the cross-run event cursor. Part of
:class:`StorageContract`.
"""

from __future__ import annotations

import threading
from typing import Any

from runcore.events import ErrorInfo, Event, EventType
from runcore.storage.base import InstanceStorage
from runcore.testing.storage_contract._support import (
    _S,
    _in_threads,
    _run,
)


class EventsContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    # --- events -----------------------------------------------------------------------------

    def test_store_event_returns_increasing_ids_and_keeps_order(
        self, storage: InstanceStorage
    ) -> None:
        events = [
            Event(run_id="r1", event_type=EventType.LOG, message=f"line {i}") for i in range(5)
        ]
        ids = [storage.store_event(event) for event in events]
        assert ids == sorted(ids) and len(set(ids)) == 5
        records = storage.get_event_records("r1")
        assert [r.storage_id for r in records] == ids
        assert [r.event for r in records] == events

    def test_events_are_kept_per_run(self, storage: InstanceStorage) -> None:
        storage.store_event(Event(run_id="r1", event_type=EventType.LOG, message="one"))
        storage.store_event(Event(run_id="r2", event_type=EventType.LOG, message="two"))
        storage.store_event(Event(run_id="r1", event_type=EventType.LOG, message="three"))
        assert [r.event.message for r in storage.get_event_records("r1")] == ["one", "three"]
        assert [r.event.message for r in storage.get_event_records("r2")] == ["two"]
        assert storage.get_event_records("nope") == []

    def test_event_cursor_limit_and_types(self, storage: InstanceStorage) -> None:
        types = [
            EventType.STEP_START,
            EventType.LOG,
            EventType.STEP_OUTPUT,
            EventType.LOG,
            EventType.STEP_SUCCESS,
            EventType.LOG,
        ]
        ids = [
            storage.store_event(Event(run_id="r", event_type=t, step_key="s", message=str(i)))
            for i, t in enumerate(types)
        ]
        storage.store_event(Event(run_id="other", event_type=EventType.LOG))

        def messages(**kwargs: Any) -> list[str]:
            return [r.event.message for r in storage.get_event_records("r", **kwargs)]

        assert messages(after_storage_id=ids[2]) == ["3", "4", "5"]
        assert messages(after_storage_id=ids[-1]) == []
        assert messages(limit=2) == ["0", "1"]
        assert messages(limit=0) == []
        assert messages(after_storage_id=ids[0], limit=2) == ["1", "2"]
        assert messages(event_types=[EventType.LOG]) == ["1", "3", "5"]
        assert messages(event_types=[EventType.STEP_START, EventType.STEP_SUCCESS]) == ["0", "4"]
        assert messages(event_types=[]) == []
        assert messages(event_types=[EventType.LOG], after_storage_id=ids[1], limit=1) == ["3"]

    def test_tailing_with_a_cursor_sees_every_event_once(self, storage: InstanceStorage) -> None:
        seen: list[str] = []
        cursor: int | None = None
        for batch in range(4):
            for i in range(3):
                storage.store_event(
                    Event(run_id="r", event_type=EventType.LOG, message=f"{batch}.{i}")
                )
            records = storage.get_event_records("r", after_storage_id=cursor)
            seen.extend(r.event.message for r in records)
            cursor = records[-1].storage_id
        assert seen == [f"{b}.{i}" for b in range(4) for i in range(3)]

    def test_store_events_stores_a_batch_in_order(self, storage: InstanceStorage) -> None:
        first = storage.store_event(Event(run_id="r", event_type=EventType.LOG, message="before"))
        batch = [
            Event(run_id="r" if i % 2 else "s", event_type=EventType.LOG, message=str(i))
            for i in range(6)
        ]
        storage.store_events(batch)
        storage.store_events([])
        last = storage.store_event(Event(run_id="r", event_type=EventType.LOG, message="after"))
        records = storage.get_event_records("r")
        assert [r.event.message for r in records] == ["before", "1", "3", "5", "after"]
        ids = [r.storage_id for r in records]
        assert ids == sorted(ids) and ids[0] == first and ids[-1] == last
        assert [r.event for r in storage.get_event_records("s")] == batch[::2]

    def test_event_json_round_trip(self, storage: InstanceStorage) -> None:
        cause = ErrorInfo(type="KeyError", message="'x'", traceback="Traceback (inner)\n")
        error = ErrorInfo(
            type="ValueError", message="bad ☃ value", traceback="Traceback (outer)\n", cause=cause
        )
        event = Event(
            run_id="r",
            event_type=EventType.STEP_FAILURE,
            timestamp=1_700_000_000.654321,
            step_key="load",
            message='failed: "quotes" and \\ backslashes\nand lines',
            level="ERROR",
            data={
                "attempt": 2,
                "ratio": 0.1,
                "ok": False,
                "none": None,
                "nested": {"list": [1, "two", {"three": [3.5]}], "empty": {}},
                "unicode": "日本語",
            },
            error=error,
        )
        plain = Event(run_id="r", event_type=EventType.LOG)
        storage.store_event(event)
        storage.store_events([plain])
        assert [r.event for r in storage.get_event_records("r")] == [event, plain]

    def test_event_ids_increase_across_runs_and_transitions(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        a = storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG))
        storage.transition(run.run_id, [_S.QUEUED], _S.STARTING)
        b = storage.store_event(Event(run_id="other", event_type=EventType.LOG))
        c = storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG))
        ids = [r.storage_id for r in storage.get_event_records(run.run_id)]
        assert len(ids) == 3 and ids[0] == a and ids[2] == c
        assert a < ids[1] < b < c

    def test_concurrent_event_writers_lose_nothing(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        per_thread = 40

        def write(i: int) -> list[int]:
            handle = storage_handles[i % len(storage_handles)]
            ids = []
            for j in range(per_thread):
                event = Event(run_id=f"r{i % 2}", event_type=EventType.LOG, message=f"{i}:{j}")
                ids.append(handle.store_event(event))
            handle.store_events(
                [Event(run_id=f"r{i % 2}", event_type=EventType.LOG, message=f"{i}:b")] * 5
            )
            return ids

        returned = [x for ids in _in_threads(8, write) for x in ids]
        records = storage_handles[0].get_event_records("r0") + storage_handles[0].get_event_records(
            "r1"
        )
        assert len(records) == 8 * (per_thread + 5)
        stored_ids = {r.storage_id for r in records}
        assert len(stored_ids) == len(records), "storage ids are unique"
        assert set(returned) <= stored_ids
        for run_id in ("r0", "r1"):
            ids = [r.storage_id for r in storage_handles[0].get_event_records(run_id)]
            assert ids == sorted(ids)
            # Each thread's own events stay in the order it wrote them.
            for i in range(8):
                mine = [
                    r.event.message
                    for r in storage_handles[0].get_event_records(run_id)
                    if r.event.message.startswith(f"{i}:") and not r.event.message.endswith("b")
                ]
                assert mine == (
                    [f"{i}:{j}" for j in range(per_thread)] if i % 2 == int(run_id[1]) else []
                )

    # --- the cross-run event cursor ---------------------------------------------------------

    def test_events_after_returns_every_runs_events_in_order(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        a = storage.store_event(Event(run_id="r1", event_type=EventType.LOG, message="a"))
        storage.transition(run.run_id, [_S.QUEUED], _S.STARTING)
        storage.store_events(
            [Event(run_id=f"r{i}", event_type=EventType.LOG, message=str(i)) for i in (2, 1)]
        )
        storage.release_pool_slots(
            run.run_id, events=[Event(run_id=run.run_id, event_type=EventType.LOG, message="z")]
        )
        records = storage.get_events_after(None, 100)
        assert [(r.event.run_id, r.event.message) for r in records] == [
            ("r1", "a"),
            (run.run_id, ""),
            ("r2", "2"),
            ("r1", "1"),
            (run.run_id, "z"),
        ]
        assert records[0].storage_id == a
        assert records[1].event.event_type is EventType.RUN_STARTING
        ids = [r.storage_id for r in records]
        assert ids == sorted(set(ids))
        assert storage.get_events_after(ids[1], 2) == records[2:4]
        assert storage.get_events_after(ids[-1], 100) == []
        assert storage.get_events_after(None, 0) == []
        assert storage.get_events_after(ids[0] - 1, 1) == records[:1]

    def test_events_after_pages_through_every_event_once(self, storage: InstanceStorage) -> None:
        written = [f"{i}" for i in range(23)]
        for i, message in enumerate(written):
            storage.store_event(
                Event(run_id=f"r{i % 4}", event_type=EventType.LOG, message=message)
            )
        seen: list[str] = []
        cursor: int | None = None
        while records := storage.get_events_after(cursor, 5):
            assert len(records) <= 5
            seen.extend(r.event.message for r in records)
            cursor = records[-1].storage_id
        assert seen == written

    def test_events_after_leaves_out_deleted_runs(self, storage: InstanceStorage) -> None:
        keep, gone = storage.add_run(_run()), storage.add_run(_run())
        for run in (keep, gone, keep):
            storage.store_event(Event(run_id=run.run_id, event_type=EventType.LOG))
        storage.delete_run(gone.run_id)
        assert [r.event.run_id for r in storage.get_events_after(None, 10)] == [keep.run_id] * 2

    def test_events_after_never_skips_an_event_committed_under_concurrent_writers(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        """Writers on every handle (single events, batches, transitions) while a reader tails
        the cursor with small pages: the reader sees every event once, in id order. An event
        committed after the reader passed its id would be missing."""
        writers, per_writer = 6, 30
        runs = [_run(status=_S.QUEUED) for _ in range(writers)]
        storage_handles[0].add_runs(runs)
        done = threading.Event()
        seen: list[int] = []

        def tail(handle: InstanceStorage, cursor: int | None) -> int | None:
            while records := handle.get_events_after(cursor, 7):
                ids = [r.storage_id for r in records]
                assert ids == sorted(ids) and (cursor is None or ids[0] > cursor)
                seen.extend(ids)
                cursor = ids[-1]
            return cursor

        def work(i: int) -> None:
            handle = storage_handles[i % len(storage_handles)]
            if i == writers:  # the reader
                cursor: int | None = None
                while not done.is_set():
                    cursor = tail(handle, cursor)
                tail(handle, cursor)
                return
            run_id = runs[i].run_id
            for j in range(per_writer):
                if j % 3 == 0:
                    handle.store_events(
                        [Event(run_id=run_id, event_type=EventType.LOG, message=f"{j}")] * 3
                    )
                else:
                    handle.store_event(Event(run_id=run_id, event_type=EventType.LOG))
            handle.transition(run_id, [_S.QUEUED], _S.STARTING)

        def run(i: int) -> None:
            try:
                work(i)
            finally:
                if i < writers:
                    with lock:
                        finished.append(i)
                        if len(finished) == writers:
                            done.set()

        lock = threading.Lock()
        finished: list[int] = []
        _in_threads(writers + 1, run)
        stored = [r.storage_id for r in storage_handles[0].get_events_after(None, 100_000)]
        assert len(stored) == writers * (per_writer // 3 * 3 + per_writer * 2 // 3 + 1)
        assert seen == stored, "the tailing reader skipped or repeated an event"
