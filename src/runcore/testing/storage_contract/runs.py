"""The storage contract: adding, getting, filtering and tagging runs. Part of
:class:`StorageContract`.
"""

from __future__ import annotations

from typing import Any

import pytest

from runcore.errors import (
    DuplicateRunError,
    RunNotFoundError,
)
from runcore.events import Event, EventType
from runcore.runs import Run, RunsFilter
from runcore.storage.base import InstanceStorage
from runcore.testing.storage_contract._support import (
    _S,
    _cid,
    _ids,
    _run,
)


class RunsContract:
    """Tests of :class:`~runcore.testing.StorageContract` (mixed into it; not collected alone)."""

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
