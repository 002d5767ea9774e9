"""PostgreSQL storage: the whole storage contract, and what only a server shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from tests._postgres import URL, pg_schema  # noqa: F401 - the fixture

from runcore.storage import InstanceStorage
from runcore.storage.postgres import PostgresStorage
from runcore.testing import StorageContract


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
