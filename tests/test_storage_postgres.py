"""PostgreSQL storage: the whole storage contract, and what only a server shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests._postgres import URL, drop_schema, pg_schema  # noqa: F401 - the fixture

from runcore.runs import Run
from runcore.storage import InstanceStorage
from runcore.storage.postgres import PostgresStorage
from runcore.testing import StorageContract
from runcore.testing.storage_contract._support import _in_threads


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def storage(self, pg_schema: str) -> Iterator[InstanceStorage]:  # noqa: F811
        with PostgresStorage(URL, schema=pg_schema, pool_max=4) as storage:
            yield storage

    @pytest.fixture
    def storage_factory(self, pg_schema: str) -> Iterator[Callable[[], InstanceStorage]]:  # noqa: F811
        """More handles on the same schema, each with its own pool (like another process)."""
        opened: list[PostgresStorage] = []

        def open_another() -> InstanceStorage:
            storage = PostgresStorage(URL, schema=pg_schema, pool_max=4)
            storage.start()
            opened.append(storage)
            return storage

        yield open_another
        for storage in opened:
            storage.close()


def test_processes_opening_a_new_schema_at_once_all_start(pg_schema: str) -> None:  # noqa: F811
    """Daemons and workers started together on a schema no one has made yet: each one's first
    ``start`` creates the schema if missing, and two ``CREATE SCHEMA IF NOT EXISTS`` at the
    same moment collide on PostgreSQL's catalog (a unique violation). The schema lock is taken
    first, so exactly one creates it and the others find it; none fails."""
    run = Run(run_id="0b9c6a36-5f7e-4b8e-9a55-2f1d2c3b4a59", job_name="j")
    for attempt in range(5):
        schema = f"{pg_schema}_{attempt}"
        storages = [PostgresStorage(URL, schema=schema, pool_max=1) for _ in range(8)]
        try:
            # Released together; any start's error fails the test, as does a hang.
            _in_threads(len(storages), lambda i, opened=storages: opened[i].start())
            storages[0].add_run(run)
            assert all(storage.get_run(run.run_id) == run for storage in storages)
        finally:
            for storage in storages:
                storage.close()
            drop_schema(schema)
