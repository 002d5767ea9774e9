"""The public executor contract suite, run against every executor runcore ships."""

from __future__ import annotations

from pathlib import Path

import pytest

import runcore as rc
from runcore.executors.base import Executor
from runcore.testing import ExecutorContract


class TestInProcessExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self) -> Executor:
        return rc.InProcessExecutor()


class TestThreadPoolExecutor(ExecutorContract):
    @pytest.fixture
    def executor(self) -> Executor:
        return rc.ThreadPoolExecutor(max_concurrent=4)


class TestMultiprocessExecutorFork(ExecutorContract):
    """Worker processes forked from the run's process."""

    @pytest.fixture
    def executor(self) -> Executor:
        return rc.MultiprocessExecutor(max_concurrent=3)


@pytest.mark.slow
class TestMultiprocessExecutorSpawn(ExecutorContract):
    """Fresh worker processes that import the job from its code location."""

    @pytest.fixture
    def executor(self) -> Executor:
        return rc.MultiprocessExecutor(max_concurrent=2, start_method="spawn")


class TestMultiprocessExecutorFileOutputs(ExecutorContract):
    """Worker processes given a file output store directly (no copy back)."""

    @pytest.fixture
    def executor(self) -> Executor:
        return rc.MultiprocessExecutor(max_concurrent=3)

    @pytest.fixture
    def output_store(self, tmp_path: Path) -> rc.OutputStore:
        return rc.FileOutputStore(tmp_path / "outputs")
