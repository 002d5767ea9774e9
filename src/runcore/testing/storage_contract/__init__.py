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

from collections.abc import Callable

import pytest

from runcore.storage.base import InstanceStorage
from runcore.testing.storage_contract._support import THREAD_TIMEOUT
from runcore.testing.storage_contract.batches import BatchesContract
from runcore.testing.storage_contract.events import EventsContract
from runcore.testing.storage_contract.lifecycle import LifecycleContract
from runcore.testing.storage_contract.pools import PoolsContract
from runcore.testing.storage_contract.runs import RunsContract
from runcore.testing.storage_contract.transitions import TransitionsContract
from runcore.testing.storage_contract.workers import WorkersContract


class StorageContract(
    RunsContract,
    TransitionsContract,
    EventsContract,
    PoolsContract,
    WorkersContract,
    BatchesContract,
    LifecycleContract,
):
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


__all__ = ["THREAD_TIMEOUT", "StorageContract"]
