"""The public contract suite for :class:`~runcore.storage.InstanceStorage` backends.

Subclass :class:`StorageContract` in a pytest module and provide a ``storage`` fixture::

    import pytest
    from runcore.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self):
            with MyStorage(...) as storage:   # started, empty
                yield storage

Every test of the suite then runs against your backend. The suite needs pytest; its one
property-based test also needs hypothesis (skipped if hypothesis is not installed).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from runcore.errors import (
    DuplicateRunError,
    IllegalTransitionError,
    InstanceClosedError,
    RunNotFoundError,
)
from runcore.events import STATUS_EVENT_TYPES, ErrorInfo, Event, EventType
from runcore.runs import LEGAL_TRANSITIONS, Run, RunsFilter, RunStatus
from runcore.storage.base import DaemonHeartbeat, InstanceStorage, WorkerRecord

T = TypeVar("T")

#: How long a concurrency test waits for its threads before it fails (seconds).
THREAD_TIMEOUT = 60.0

_S = RunStatus


def _run(job_name: str = "job", **kwargs: Any) -> Run:
    return Run(job_name=job_name, **kwargs)


def _cid(i: int) -> str:
    """The run id of catalog run ``i`` (run ids are UUIDs; these are stable ones)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"runcore-contract-run-{i}"))


def _ids(records: Sequence[Any]) -> list[str]:
    return [record.run.run_id for record in records]


def _in_threads(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(0) .. fn(n-1)`` on ``n`` threads released at once; re-raise the first error.

    Daemon threads and one overall deadline, so a storage that deadlocks fails the test
    (after :data:`THREAD_TIMEOUT`) instead of hanging it.
    """
    barrier = threading.Barrier(n)
    results: dict[int, T] = {}
    errors: dict[int, BaseException] = {}

    def call(i: int) -> None:
        try:
            barrier.wait(timeout=THREAD_TIMEOUT)
            results[i] = fn(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + THREAD_TIMEOUT
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if stuck:
        pytest.fail(f"threads {stuck} did not finish within {THREAD_TIMEOUT} s (a deadlock?)")
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(n)]


class StorageContract:
    """Checks that a storage keeps the contract of :mod:`runcore.storage.base`.

    Not collected by itself (no ``Test`` prefix); subclass it as ``class TestX(StorageContract)``.

    Fixtures the subclass provides:

    ``storage`` (required)
        A started, empty :class:`~runcore.storage.InstanceStorage`, new for each test. Close
        it in the fixture's teardown; the suite closes it itself in the closed-storage test,
        so ``close()`` must be idempotent (it is part of the contract).

    ``storage_factory`` (optional)
        A zero-argument callable that opens another started handle on the *same* data as
        ``storage`` (for example a second ``SqliteStorage`` on the same file, as another
        process would). Concurrency tests spread their threads over several handles, so a
        compare-and-set that only holds inside one handle is caught. The fixture owns what it
        opens and closes it at teardown. The default returns ``storage`` itself, which suits a
        backend whose data lives in one object (like ``InMemoryStorage``).

    The suite's own fixtures (``storage_handles``, ``catalog``) build on these two; do not
    override them. Every test is bounded: threads that do not finish within
    :data:`THREAD_TIMEOUT` seconds fail the test. The property-based test needs hypothesis and
    is skipped without it.
    """

    @pytest.fixture
    def storage_factory(self, storage: InstanceStorage) -> Callable[[], InstanceStorage]:
        return lambda: storage

    @pytest.fixture
    def storage_handles(
        self, storage: InstanceStorage, storage_factory: Callable[[], InstanceStorage]
    ) -> list[InstanceStorage]:
        """``storage`` and two more handles on the same data, for concurrency tests."""
        return [storage, storage_factory(), storage_factory()]

    # --- runs: add and get ------------------------------------------------------------------

    def test_add_run_and_get_it_back_unchanged(self, storage: InstanceStorage) -> None:
        run = _run(
            "etl",
            status=_S.QUEUED,
            tags={"team": "data", "runcore/priority": "3", "unicode": "snø ☃"},
            code_location="pkg.module:defs",
            step_keys_to_execute=["a", "b"],
            parent_run_id=_cid(100),
            root_run_id=_cid(101),
            created_at=1_700_000_000.123456,
            updated_at=1_700_000_001.5,
            failure_reason=None,
        )
        assert storage.add_run(run) == run
        assert storage.get_run(run.run_id) == run

    def test_get_unknown_run_is_none(self, storage: InstanceStorage) -> None:
        assert storage.get_run("no-such-run") is None
        assert storage.get_run_records(RunsFilter(run_ids=["no-such-run"])) == []

    def test_duplicate_run_id_is_refused_and_the_first_run_kept(
        self, storage: InstanceStorage
    ) -> None:
        first = _run("first")
        storage.add_run(first)
        with pytest.raises(DuplicateRunError, match=first.run_id):
            storage.add_run(_run("second", run_id=first.run_id))
        assert storage.get_run(first.run_id) == first
        assert storage.count_runs() == 1

    def test_add_runs_stores_a_batch_in_order(self, storage: InstanceStorage) -> None:
        runs = [_run(f"job{i}", tags={"i": str(i)}) for i in range(5)]
        storage.add_runs(runs)
        records = storage.get_run_records(ascending=True)
        assert [record.run for record in records] == runs
        assert storage.get_run_records(RunsFilter(tags={"i": "3"})) == [records[3]]

    def test_add_runs_with_a_duplicate_stores_none_of_the_batch(
        self, storage: InstanceStorage
    ) -> None:
        existing = _run()
        storage.add_run(existing)
        batch = [_run("a"), _run("b", run_id=existing.run_id), _run("c")]
        with pytest.raises(DuplicateRunError):
            storage.add_runs(batch)
        twice = _run("d")
        with pytest.raises(DuplicateRunError):
            storage.add_runs([twice, _run("e"), twice])
        assert _ids(storage.get_run_records()) == [existing.run_id]

    def test_run_storage_ids_increase_in_insertion_order(self, storage: InstanceStorage) -> None:
        runs = [_run() for _ in range(10)]
        for run in runs[:5]:
            storage.add_run(run)
        storage.add_runs(runs[5:])
        records = storage.get_run_records(ascending=True)
        assert _ids(records) == [run.run_id for run in runs]
        ids = [record.storage_id for record in records]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)

    def test_storage_ids_keep_increasing_after_the_newest_run_is_deleted(
        self, storage: InstanceStorage
    ) -> None:
        a, b = _run(), _run()
        storage.add_runs([a, b])
        b_id = storage.get_run_records(RunsFilter(run_ids=[b.run_id]))[0].storage_id
        b_event = storage.store_event(Event(run_id=b.run_id, event_type=EventType.LOG))
        storage.delete_run(b.run_id)
        c = _run()
        storage.add_run(c)
        c_id = storage.get_run_records(RunsFilter(run_ids=[c.run_id]))[0].storage_id
        assert c_id > b_id, "a storage id was handed out again after a delete"
        assert storage.store_event(Event(run_id=c.run_id, event_type=EventType.LOG)) > b_event

    # --- runs: filters ----------------------------------------------------------------------

    @pytest.fixture
    def catalog(self, storage: InstanceStorage) -> dict[str, Run]:
        """Eight runs with known fields, stored oldest first (ids ``run-0`` .. ``run-7``)."""
        base = 1_700_000_000.0
        specs: list[dict[str, Any]] = [
            {"job_name": "etl", "status": _S.SUCCESS, "tags": {"team": "a", "env": "prod"}},
            {"job_name": "etl", "status": _S.FAILURE, "tags": {"team": "b", "env": "prod"}},
            {"job_name": "report", "status": _S.QUEUED, "tags": {"team": "a"}},
            {
                "job_name": "etl",
                "status": _S.STARTED,
                "tags": {"team": "c", "env": "dev"},
                "parent_run_id": _cid(1),
                "root_run_id": _cid(1),
            },
            {"job_name": "report", "status": _S.SUCCESS, "tags": {"team": "a", "env": "dev"}},
            {
                "job_name": "etl",
                "status": _S.QUEUED,
                "tags": {},
                "parent_run_id": _cid(3),
                "root_run_id": _cid(1),
            },
            {"job_name": "sync", "status": _S.CANCELED, "tags": {"team": "b", "env": "dev"}},
            {"job_name": "etl", "status": _S.SUCCESS, "tags": {"team": "a", "env": "prod"}},
        ]
        runs: dict[str, Run] = {}
        for i, spec in enumerate(specs):
            runs[_cid(i)] = _run(run_id=_cid(i), created_at=base + i, **spec)
        for run in runs.values():
            storage.add_run(run)
        return runs

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param(None, [7, 6, 5, 4, 3, 2, 1, 0], id="no-filter"),
            pytest.param(RunsFilter(), [7, 6, 5, 4, 3, 2, 1, 0], id="empty-filter"),
            pytest.param(RunsFilter(run_ids=[_cid(2), _cid(6)]), [6, 2], id="run_ids"),
            pytest.param(RunsFilter(run_ids=[]), [], id="run_ids-empty"),
            pytest.param(RunsFilter(run_ids=[_cid(1), "nope"]), [1], id="run_ids-unknown"),
            pytest.param(RunsFilter(job_name="report"), [4, 2], id="job_name"),
            pytest.param(RunsFilter(job_name="nope"), [], id="job_name-unknown"),
            pytest.param(RunsFilter(statuses=[_S.SUCCESS]), [7, 4, 0], id="one-status"),
            pytest.param(
                RunsFilter(statuses=[_S.QUEUED, _S.CANCELED]), [6, 5, 2], id="two-statuses"
            ),
            pytest.param(RunsFilter(statuses=[]), [], id="statuses-empty"),
            pytest.param(RunsFilter(tags={"team": "a"}), [7, 4, 2, 0], id="one-tag"),
            pytest.param(RunsFilter(tags={"team": ["b", "c"]}), [6, 3, 1], id="tag-list-value"),
            pytest.param(RunsFilter(tags={"team": ("c",)}), [3], id="tag-tuple-value"),
            pytest.param(RunsFilter(tags={"team": []}), [], id="tag-empty-list"),
            pytest.param(RunsFilter(tags={"team": "a", "env": "prod"}), [7, 0], id="two-tags"),
            pytest.param(
                RunsFilter(tags={"team": ["a", "b"], "env": "dev"}), [6, 4], id="tag-list-and-tag"
            ),
            pytest.param(
                RunsFilter(tags={"team": "a"}, created_before=1_700_000_004.5),
                [4, 2, 0],
                id="tag-and-created_before",
            ),
            pytest.param(
                RunsFilter(tags={"team": ["a"], "env": ["prod", "dev"]}),
                [7, 4, 0],
                id="one-item-list-and-list",
            ),
            pytest.param(RunsFilter(tags={"env": "nope"}), [], id="tag-unknown-value"),
            pytest.param(RunsFilter(tags={"nope": "a"}), [], id="tag-unknown-key"),
            pytest.param(RunsFilter(created_after=1_700_000_005.0), [7, 6], id="created_after"),
            pytest.param(RunsFilter(created_before=1_700_000_002.0), [1, 0], id="created_before"),
            pytest.param(
                RunsFilter(created_after=1_700_000_002.0, created_before=1_700_000_005.0),
                [4, 3],
                id="created-window-exclusive",
            ),
            pytest.param(RunsFilter(parent_run_id=_cid(1)), [3], id="parent_run_id"),
            pytest.param(RunsFilter(root_run_id=_cid(1)), [5, 3], id="root_run_id"),
            pytest.param(
                RunsFilter(job_name="etl", statuses=[_S.SUCCESS, _S.QUEUED], tags={"team": "a"}),
                [7, 0],
                id="combined",
            ),
            pytest.param(
                RunsFilter(
                    run_ids=[_cid(0), _cid(3), _cid(7)],
                    statuses=[_S.SUCCESS, _S.STARTED],
                    created_after=1_700_000_000.5,
                ),
                [7, 3],
                id="combined-ids-statuses-time",
            ),
        ],
    )
    def test_filters(
        self,
        storage: InstanceStorage,
        catalog: dict[str, Run],
        filters: RunsFilter | None,
        expected: list[int],
    ) -> None:
        want = [_cid(i) for i in expected]
        assert _ids(storage.get_run_records(filters)) == want
        assert _ids(storage.get_run_records(filters, ascending=True)) == want[::-1]
        assert storage.count_runs(filters) == len(want)
        assert storage.get_run_ids(filters) == want
        assert storage.get_run_ids(filters, ascending=True) == want[::-1]
        reference = [
            run.run_id for run in catalog.values() if filters is None or filters.matches(run)
        ]
        assert sorted(reference) == sorted(want), "the expectation disagrees with RunsFilter"

    def test_limit(self, storage: InstanceStorage, catalog: dict[str, Run]) -> None:
        assert _ids(storage.get_run_records(limit=3)) == [_cid(7), _cid(6), _cid(5)]
        assert _ids(storage.get_run_records(limit=3, ascending=True)) == [
            _cid(0),
            _cid(1),
            _cid(2),
        ]
        assert _ids(storage.get_run_records(RunsFilter(tags={"team": "a"}), limit=2)) == [
            _cid(7),
            _cid(4),
        ]
        assert storage.get_run_records(limit=0) == []
        assert len(storage.get_run_records(limit=100)) == 8

    @pytest.mark.parametrize("ascending", [False, True])
    @pytest.mark.parametrize(
        "filters",
        [
            None,
            RunsFilter(job_name="etl"),
            RunsFilter(tags={"env": "dev"}),
            RunsFilter(tags={"team": ["a", "b"], "env": "prod"}),
            RunsFilter(statuses=[_S.SUCCESS, _S.QUEUED], tags={"team": "a"}),
        ],
        ids=["all", "job", "tag", "tags", "statuses-and-tag"],
    )
    def test_after_storage_id_pages_through_every_run_once(
        self,
        storage: InstanceStorage,
        catalog: dict[str, Run],
        ascending: bool,
        filters: RunsFilter | None,
    ) -> None:
        everything = storage.get_run_records(filters, ascending=ascending)
        pages: list[str] = []
        cursor: int | None = None
        for _ in range(10):
            page = storage.get_run_records(
                filters, limit=3, ascending=ascending, after_storage_id=cursor
            )
            if not page:
                break
            assert len(page) <= 3
            pages.extend(_ids(page))
            cursor = page[-1].storage_id
        assert pages == _ids(everything)
        cursor = everything[2].storage_id
        assert storage.get_run_ids(
            filters, limit=2, ascending=ascending, after_storage_id=cursor
        ) == _ids(everything[3:5])

    def test_after_storage_id_excludes_the_cursor_itself(
        self, storage: InstanceStorage, catalog: dict[str, Run]
    ) -> None:
        records = storage.get_run_records(ascending=True)
        middle = records[3].storage_id
        assert _ids(storage.get_run_records(after_storage_id=middle)) == [
            _cid(2),
            _cid(1),
            _cid(0),
        ]
        assert _ids(storage.get_run_records(after_storage_id=middle, ascending=True)) == [
            _cid(4),
            _cid(5),
            _cid(6),
            _cid(7),
        ]

    def test_count_runs(self, storage: InstanceStorage) -> None:
        assert storage.count_runs() == 0
        storage.add_runs([_run(status=_S.QUEUED) for _ in range(3)])
        storage.add_run(_run(status=_S.SUCCESS))
        assert storage.count_runs() == 4
        assert storage.count_runs(RunsFilter(statuses=[_S.QUEUED])) == 3

    def test_records_carry_the_stored_run(
        self, storage: InstanceStorage, catalog: dict[str, Run]
    ) -> None:
        for record in storage.get_run_records():
            assert record.run == catalog[record.run.run_id]

    # --- runs: tags -------------------------------------------------------------------------

    def test_add_run_tags_adds_and_overwrites(self, storage: InstanceStorage) -> None:
        run = _run(tags={"team": "a", "env": "dev"})
        other = _run(tags={"team": "a"})
        storage.add_runs([run, other])
        updated = storage.add_run_tags(run.run_id, {"env": "prod", "owner": "ann"})
        assert updated.tags == {"team": "a", "env": "prod", "owner": "ann"}
        assert updated.run_id == run.run_id and updated.job_name == run.job_name
        assert storage.get_run(run.run_id) == updated
        assert _ids(storage.get_run_records(RunsFilter(tags={"owner": "ann"}))) == [run.run_id]
        assert _ids(storage.get_run_records(RunsFilter(tags={"env": "prod"}))) == [run.run_id]
        assert storage.get_run_records(RunsFilter(tags={"env": "dev"})) == []
        assert storage.count_runs(RunsFilter(tags={"team": "a"})) == 2
        assert storage.get_run(other.run_id) == other

    def test_add_run_tags_to_an_unknown_run_raises(self, storage: InstanceStorage) -> None:
        with pytest.raises(RunNotFoundError, match="nope"):
            storage.add_run_tags("nope", {"a": "b"})

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
        assert moved is not None
        assert [r.event for r in storage.get_event_records(run.run_id)] == [event]
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


def _transition_paths() -> Iterator[list[RunStatus]]:
    """Every path through the status machine from NOT_STARTED to a terminal status."""

    def walk(path: list[RunStatus]) -> Iterator[list[RunStatus]]:
        last = path[-1]
        if last.is_terminal:
            yield path
            return
        for nxt in sorted(LEGAL_TRANSITIONS[last], key=lambda s: s.value):
            if nxt not in path:
                yield from walk([*path, nxt])

    yield from walk([_S.NOT_STARTED])
