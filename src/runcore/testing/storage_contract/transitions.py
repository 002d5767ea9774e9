"""The storage contract: status transitions: compare-and-set, legal moves, slots claimed with
them. Part of :class:`StorageContract`.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from runcore.errors import (
    IllegalTransitionError,
    RunNotFoundError,
)
from runcore.events import STATUS_EVENT_TYPES, ErrorInfo, Event, EventType
from runcore.runs import LEGAL_TRANSITIONS, RunsFilter, RunStatus
from runcore.storage.base import InstanceStorage
from runcore.testing.storage_contract._support import (
    _S,
    _ids,
    _in_threads,
    _run,
    _transition_paths,
)


class TransitionsContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

    # --- transitions ------------------------------------------------------------------------

    def test_transition_moves_a_run_and_returns_it(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        before = time.time()
        moved = storage.transition(run.run_id, [_S.QUEUED], _S.STARTING)
        assert moved is not None
        assert moved.status is _S.STARTING
        assert moved.updated_at is not None and moved.updated_at >= before - 1
        assert moved.started_at is None and moved.ended_at is None
        assert storage.get_run(run.run_id) == moved
        assert _ids(storage.get_run_records(RunsFilter(statuses=[_S.STARTING]))) == [run.run_id]
        assert storage.get_run_records(RunsFilter(statuses=[_S.QUEUED])) == []

    def test_transition_stamps_its_event_with_the_transition_time(
        self, storage: InstanceStorage
    ) -> None:
        # An event made on a host whose clock is off (here: by a day) is stamped with the
        # storage's time of the move, like the run's own times.
        run = storage.add_run(_run(status=_S.STARTED))
        skewed = Event(
            run_id=run.run_id,
            event_type=EventType.RUN_FAILURE,
            message="failed elsewhere",
            timestamp=time.time() + 86400,
        )
        moved = storage.transition(run.run_id, [_S.STARTED], _S.FAILURE, event=skewed)
        assert moved is not None and moved.ended_at is not None
        [stored] = storage.get_event_records(run.run_id)
        assert stored.event.message == "failed elsewhere"
        assert stored.event.timestamp == moved.ended_at == moved.updated_at

    def test_transition_from_another_status_returns_none_and_writes_nothing(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        assert storage.transition(run.run_id, [_S.STARTING], _S.STARTED) is None
        assert storage.transition(run.run_id, [_S.STARTED, _S.CANCELING], _S.FAILURE) is None
        assert storage.get_run(run.run_id) == run
        assert storage.get_event_records(run.run_id) == []

    def test_transition_with_several_sources(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.STARTING))
        moved = storage.transition(run.run_id, [_S.QUEUED, _S.STARTING], _S.FAILURE)
        assert moved is not None and moved.status is _S.FAILURE

    def test_transition_sets_run_times(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        starting = storage.transition(run.run_id, [_S.QUEUED], _S.STARTING)
        started = storage.transition(run.run_id, [_S.STARTING], _S.STARTED)
        canceling = storage.transition(run.run_id, [_S.STARTED], _S.CANCELING)
        canceled = storage.transition(run.run_id, [_S.CANCELING], _S.CANCELED)
        assert starting and started and canceling and canceled
        assert started.started_at is not None
        assert canceling.started_at == started.started_at, "started_at is kept once set"
        assert canceling.ended_at is None
        assert canceled.ended_at is not None and canceled.ended_at >= started.started_at
        assert canceled.started_at == started.started_at
        stamps = [r.updated_at for r in (starting, started, canceling, canceled)]
        assert all(s is not None for s in stamps)
        assert stamps == sorted(stamps)  # type: ignore[type-var]
        assert storage.get_run(run.run_id) == canceled

    def test_transition_writes_the_status_event_in_the_same_call(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.NOT_STARTED))
        path = [_S.QUEUED, _S.STARTING, _S.STARTED, _S.SUCCESS]
        current = _S.NOT_STARTED
        for status in path:
            assert storage.transition(run.run_id, [current], status) is not None
            current = status
        events = [record.event for record in storage.get_event_records(run.run_id)]
        assert [e.event_type for e in events] == [STATUS_EVENT_TYPES[s] for s in path]
        assert all(e.run_id == run.run_id for e in events)

    def test_transition_stores_the_given_event(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.STARTED))
        error = ErrorInfo(type="ValueError", message="bad input", traceback="Traceback ...")
        event = Event(
            run_id=run.run_id,
            event_type=EventType.RUN_FAILURE,
            message="step load failed",
            data={"step": "load"},
            error=error,
        )
        moved = storage.transition(run.run_id, [_S.STARTED], _S.FAILURE, event=event)
        assert moved is not None and moved.updated_at is not None
        stamped = attrs.evolve(event, timestamp=moved.updated_at)  # the transition's time
        assert [r.event for r in storage.get_event_records(run.run_id)] == [stamped]
        assert moved.failure_reason == "step load failed"

    def test_transition_records_the_failure_reason(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        moved = storage.transition(
            run.run_id, [_S.QUEUED], _S.FAILURE, failure_reason="image not found"
        )
        assert moved is not None and moved.failure_reason == "image not found"
        stored = storage.get_run(run.run_id)
        assert stored is not None and stored.failure_reason == "image not found"

    @pytest.mark.parametrize(
        ("path", "to_status"),
        [
            ([_S.STARTED], _S.SUCCESS),
            ([_S.STARTED], _S.FAILURE),
            ([_S.STARTED, _S.CANCELING], _S.CANCELED),
            ([_S.QUEUED], _S.CANCELED),
        ],
    )
    def test_terminal_transition_releases_the_runs_pool_slots(
        self, storage: InstanceStorage, path: list[RunStatus], to_status: RunStatus
    ) -> None:
        start = _S.QUEUED if path == [_S.QUEUED] else _S.STARTED
        run = storage.add_run(_run(status=start))
        other = storage.add_run(_run(status=_S.STARTED))
        assert storage.claim_pool_slot("db", run.run_id, "load", limit=5)
        assert storage.claim_pool_slot("db", run.run_id, "save", limit=5)
        assert storage.claim_pool_slot("api", run.run_id, None, limit=5)
        assert storage.claim_pool_slot("db", other.run_id, "load", limit=5)
        current = start
        for status in path[1:]:
            assert storage.transition(run.run_id, [current], status) is not None
            current = status
        assert len(storage.get_pool_leases()) == 4, "a non-terminal move keeps the slots"
        assert storage.transition(run.run_id, [current], to_status) is not None
        leases = storage.get_pool_leases()
        assert [(lease.pool, lease.run_id) for lease in leases] == [("db", other.run_id)]

    @pytest.mark.parametrize(
        ("from_statuses", "to_status"),
        [
            ([_S.SUCCESS], _S.STARTED),
            ([_S.FAILURE], _S.QUEUED),
            ([_S.CANCELED], _S.CANCELING),
            ([_S.QUEUED], _S.SUCCESS),
            ([_S.QUEUED, _S.STARTED], _S.STARTING),
            ([_S.STARTED], _S.QUEUED),
            ([_S.NOT_STARTED], _S.NOT_STARTED),
        ],
    )
    def test_illegal_transition_raises_before_any_write(
        self, storage: InstanceStorage, from_statuses: list[RunStatus], to_status: RunStatus
    ) -> None:
        run = storage.add_run(_run(status=from_statuses[0]))
        with pytest.raises(IllegalTransitionError, match=to_status.value):
            storage.transition(run.run_id, from_statuses, to_status)
        # Raised before reading the run at all: an unknown id gives the same error.
        with pytest.raises(IllegalTransitionError):
            storage.transition("no-such-run", from_statuses, to_status)
        assert storage.get_run(run.run_id) == run
        assert storage.get_event_records(run.run_id) == []

    def test_transition_of_an_unknown_run_raises(self, storage: InstanceStorage) -> None:
        with pytest.raises(RunNotFoundError, match="no-such-run"):
            storage.transition("no-such-run", [_S.QUEUED], _S.STARTING)

    def test_a_terminal_run_never_changes_again(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        done = storage.transition(run.run_id, [_S.QUEUED], _S.CANCELED)
        assert done is not None
        for to_status in RunStatus:
            for sources in ([_S.QUEUED], [_S.STARTED, _S.CANCELING], [_S.STARTING]):
                if all(to_status in LEGAL_TRANSITIONS[s] for s in sources):
                    assert storage.transition(run.run_id, sources, to_status) is None
            with pytest.raises(IllegalTransitionError):
                storage.transition(run.run_id, [_S.CANCELED], to_status)
        assert storage.get_run(run.run_id) == done
        assert len(storage.get_event_records(run.run_id)) == 1

    def test_transition_claims_pool_slots_all_or_nothing(self, storage: InstanceStorage) -> None:
        first = storage.add_run(_run(status=_S.QUEUED))
        second = storage.add_run(_run(status=_S.QUEUED))
        claims = [("db", 1), ("api", 2)]
        moved = storage.transition(first.run_id, [_S.QUEUED], _S.STARTING, claim_slots=claims)
        assert moved is not None and moved.status is _S.STARTING
        leases = [(lease.pool, lease.run_id, lease.step_key) for lease in storage.get_pool_leases()]
        assert leases == [("db", first.run_id, None), ("api", first.run_id, None)]
        # "api" has room but "db" is full: nothing happens at all.
        blocked = storage.transition(
            second.run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("api", 2), ("db", 1)]
        )
        assert blocked is None
        assert storage.get_run(second.run_id) == second
        assert storage.get_event_records(second.run_id) == []
        assert [lease.run_id for lease in storage.get_pool_leases()] == [first.run_id] * 2
        # The first run ends, its slots go, and the second one gets them.
        assert storage.transition(first.run_id, [_S.STARTING], _S.FAILURE) is not None
        moved = storage.transition(
            second.run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("api", 2), ("db", 1)]
        )
        assert moved is not None
        assert {lease.pool for lease in storage.get_pool_leases(None)} == {"api", "db"}
        assert {lease.run_id for lease in storage.get_pool_leases()} == {second.run_id}

    def test_transition_claims_nothing_when_the_run_was_moved_first(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.STARTING))
        assert (
            storage.transition(run.run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("db", 1)])
            is None
        )
        assert storage.get_pool_leases() == []

    def test_transition_claim_of_a_slot_already_held_succeeds(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        assert storage.claim_pool_slot("db", run.run_id, None, limit=1)
        moved = storage.transition(run.run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("db", 1)])
        assert moved is not None
        assert len(storage.get_pool_leases("db")) == 1

    def test_concurrent_transitions_with_claims_respect_the_limit(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        runs = [_run(status=_S.QUEUED) for _ in range(12)]
        storage_handles[0].add_runs(runs)

        def start(i: int) -> bool:
            moved = storage_handles[i % len(storage_handles)].transition(
                runs[i].run_id, [_S.QUEUED], _S.STARTING, claim_slots=[("db", 3)]
            )
            return moved is not None

        results = _in_threads(len(runs), start)
        assert sum(results) == 3
        started = {run.run_id for run, won in zip(runs, results, strict=True) if won}
        assert {lease.run_id for lease in storage_handles[0].get_pool_leases("db")} == started
        assert set(storage_handles[0].get_run_ids(RunsFilter(statuses=[_S.STARTING]))) == started

    def test_concurrent_transitions_have_exactly_one_winner(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        storage = storage_handles[0]
        runs = [_run(status=_S.QUEUED) for _ in range(25)]
        storage.add_runs(runs)
        threads = 8

        def race(i: int) -> list[str]:
            handle = storage_handles[i % len(storage_handles)]
            order = [run.run_id for run in runs]
            random.Random(i).shuffle(order)
            won = []
            for run_id in order:
                if handle.transition(run_id, [_S.QUEUED], _S.STARTING) is not None:
                    won.append(run_id)
            return won

        wins = [run_id for won in _in_threads(threads, race) for run_id in won]
        assert sorted(wins) == sorted(run.run_id for run in runs), "each run is won exactly once"
        for run in runs:
            events = storage.get_event_records(run.run_id)
            assert [r.event.event_type for r in events] == [EventType.RUN_STARTING]

    def test_concurrent_transitions_to_different_targets_have_one_winner(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        storage = storage_handles[0]
        runs = [_run(status=_S.STARTED) for _ in range(20)]
        storage.add_runs(runs)
        targets = [_S.SUCCESS, _S.FAILURE, _S.CANCELING, _S.SUCCESS, _S.FAILURE, _S.CANCELING]

        def race(i: int) -> list[tuple[str, RunStatus]]:
            handle = storage_handles[i % len(storage_handles)]
            won = []
            for run in runs:
                if handle.transition(run.run_id, [_S.STARTED], targets[i]) is not None:
                    won.append((run.run_id, targets[i]))
            return won

        wins = [win for won in _in_threads(len(targets), race) for win in won]
        assert sorted(run_id for run_id, _ in wins) == sorted(run.run_id for run in runs)
        for run_id, status in wins:
            stored = storage.get_run(run_id)
            assert stored is not None and stored.status is status
            assert len(storage.get_event_records(run_id)) == 1

    def test_limit_check_sees_the_tags_of_the_runs_in_progress(
        self, storage: InstanceStorage
    ) -> None:
        statuses = [_S.QUEUED, _S.STARTING, _S.STARTED, _S.CANCELING, _S.SUCCESS, _S.NOT_STARTED]
        storage.add_runs([_run(status=st, tags={"s": st.value}) for st in statuses])
        mover = storage.add_run(_run(status=_S.QUEUED, tags={"me": "1"}))
        seen: list[list[dict[str, str]]] = []

        def check(in_progress: Sequence[Any]) -> bool:
            seen.append([dict(tags) for tags in in_progress])
            return True

        moved = storage.transition(mover.run_id, [_S.QUEUED], _S.STARTING, limit_check=check)
        assert moved is not None and moved.status is _S.STARTING
        assert len(seen) == 1
        assert sorted(tags["s"] for tags in seen[0]) == ["CANCELING", "STARTED", "STARTING"]

    def test_a_refused_limit_check_writes_nothing(self, storage: InstanceStorage) -> None:
        run = storage.add_run(_run(status=_S.QUEUED))
        before = storage.get_event_records(run.run_id)
        refused = storage.transition(
            run.run_id,
            [_S.QUEUED],
            _S.STARTING,
            claim_slots=[("db", 1)],
            limit_check=lambda in_progress: False,
        )
        assert refused is None
        assert storage.get_run(run.run_id) == run
        assert storage.get_event_records(run.run_id) == before
        assert storage.get_pool_leases() == []

    def test_a_limit_check_is_not_called_when_the_status_does_not_match(
        self, storage: InstanceStorage
    ) -> None:
        run = storage.add_run(_run(status=_S.CANCELED))
        calls: list[int] = []

        def check(in_progress: Sequence[Any]) -> bool:
            calls.append(len(in_progress))
            return True

        moved = storage.transition(run.run_id, [_S.QUEUED], _S.STARTING, limit_check=check)
        assert moved is None and calls == []

    def test_concurrent_transitions_with_a_limit_check_never_exceed_it(
        self, storage_handles: list[InstanceStorage]
    ) -> None:
        """Each caller checks "fewer than 3 in progress" inside its transition: with 12 racing
        over several handles, exactly 3 start (a check made outside the write would let more
        through)."""
        runs = [_run(status=_S.QUEUED) for _ in range(12)]
        storage_handles[0].add_runs(runs)

        def start(i: int) -> bool:
            handle = storage_handles[i % len(storage_handles)]
            moved = handle.transition(
                runs[i].run_id,
                [_S.QUEUED],
                _S.STARTING,
                limit_check=lambda in_progress: len(in_progress) < 3,
            )
            return moved is not None

        assert sum(_in_threads(len(runs), start)) == 3
        starting = storage_handles[0].count_runs(RunsFilter(statuses=[_S.STARTING]))
        assert starting == 3

    def test_every_path_through_the_status_machine(self, storage: InstanceStorage) -> None:
        paths = list(_transition_paths())
        assert len(paths) > 10
        for path in paths:
            run = storage.add_run(_run(status=path[0]))
            for current, nxt in itertools.pairwise(path):
                moved = storage.transition(run.run_id, [current], nxt)
                assert moved is not None and moved.status is nxt, f"{current} -> {nxt}"
            final = storage.get_run(run.run_id)
            assert final is not None and final.status is path[-1] and final.ended_at is not None
            types = [r.event.event_type for r in storage.get_event_records(run.run_id)]
            assert types == [STATUS_EVENT_TYPES[s] for s in path[1:]], path

    def test_transition_sequences_keep_the_status_machine(self, storage: InstanceStorage) -> None:
        """Property: any sequence of requests; terminal runs stay put, status = last success."""
        pytest.importorskip("hypothesis")
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        statuses = list(RunStatus)
        requests = st.lists(
            st.tuples(
                st.lists(st.sampled_from(statuses), min_size=1, max_size=3, unique=True),
                st.sampled_from(statuses),
            ),
            max_size=12,
        )

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(initial=st.sampled_from(statuses), requests=requests)
        def check(initial: RunStatus, requests: list[tuple[list[RunStatus], RunStatus]]) -> None:
            run = storage.add_run(_run(status=initial))
            status = initial
            moves = 0
            for sources, to_status in requests:
                legal = all(to_status in LEGAL_TRANSITIONS[s] for s in sources)
                if not legal:
                    with pytest.raises(IllegalTransitionError):
                        storage.transition(run.run_id, sources, to_status)
                    continue
                result = storage.transition(run.run_id, sources, to_status)
                if status in sources:
                    assert not status.is_terminal, "a terminal status has no legal way out"
                    assert result is not None and result.status is to_status
                    status = to_status
                    moves += 1
                else:
                    assert result is None
                stored = storage.get_run(run.run_id)
                assert stored is not None and stored.status is status
            events = storage.get_event_records(run.run_id)
            assert len(events) == moves, "one status event per successful transition"

        check()
