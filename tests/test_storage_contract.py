"""The public storage contract suite, run against every backend runcore ships."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runcore.storage import InMemoryStorage, InstanceStorage, SqliteStorage
from runcore.testing import StorageContract


class TestInMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[InstanceStorage]:
        with InMemoryStorage() as storage:
            yield storage


class TestSqliteStorage(StorageContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "runs.db"

    @pytest.fixture
    def storage(self, db_path: Path) -> Iterator[InstanceStorage]:
        with SqliteStorage(db_path) as storage:
            yield storage

    @pytest.fixture
    def storage_factory(self, db_path: Path) -> Iterator[Callable[[], InstanceStorage]]:
        """More handles on the same file, each with its own connections (like another process)."""
        opened: list[SqliteStorage] = []

        def open_another() -> InstanceStorage:
            storage = SqliteStorage(db_path)
            storage.start()
            opened.append(storage)
            return storage

        yield open_another
        for storage in opened:
            storage.close()
