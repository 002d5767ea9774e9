"""The public coordinator contract suite, run against every coordinator runcore ships."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import runcore as rc
from runcore.testing import CoordinatorContract


class TestDefaultRunCoordinator(CoordinatorContract):
    @pytest.fixture
    def coordinator_factory(self) -> Callable[[], rc.RunCoordinator]:
        return rc.DefaultRunCoordinator


class TestQueuedRunCoordinator(CoordinatorContract):
    @pytest.fixture
    def coordinator_factory(self) -> Callable[[], rc.RunCoordinator]:
        return rc.QueuedRunCoordinator


class TestQueuedRunCoordinatorOneLaunchPerPass(CoordinatorContract):
    @pytest.fixture
    def coordinator_factory(self) -> Callable[[], rc.RunCoordinator]:
        return lambda: rc.QueuedRunCoordinator(max_launch_per_pass=1)


class TestQueuedRunCoordinatorInMemory(CoordinatorContract):
    """On in-memory storage: every instance shares the one storage object."""

    @pytest.fixture
    def coordinator_factory(self) -> Callable[[], rc.RunCoordinator]:
        return rc.QueuedRunCoordinator

    @pytest.fixture
    def storage_factory(self) -> Callable[[], rc.InstanceStorage]:
        storage = rc.InMemoryStorage()
        return lambda: storage
