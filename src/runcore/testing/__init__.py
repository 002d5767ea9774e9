"""Test helpers for runcore users: public contract suites, test doubles and a pytest plugin.

Contract suites: subclass one in a pytest module and provide the fixture it names, to prove a
component of your own keeps runcore's contract (runcore's own components pass the same suites):

* ``StorageContract``: a ``storage`` fixture, a custom :class:`~runcore.storage.InstanceStorage`.
* ``LauncherContract``: an ``instance`` fixture whose launcher is a custom
  :class:`~runcore.RunLauncher`.
* ``CoordinatorContract``: a ``coordinator_factory`` fixture making custom
  :class:`~runcore.RunCoordinator` objects.
* ``ExecutorContract``: an ``executor`` fixture, a custom :class:`~runcore.Executor`.
* ``OutputStoreContract``: an ``output_store`` fixture, a custom :class:`~runcore.OutputStore`.

Test doubles, at the edge of what a test checks:

* ``RecordingLauncher``: a launcher that records the runs it is asked to launch and runs
  nothing, to check a coordinator configuration without executing jobs.
* ``VirtualClock``: a clock for ``Daemon(clock=...)`` that a test steps forward.

The pytest plugin (:mod:`runcore.testing.pytest_plugin`, loaded by pytest on its own) gives
tests the fixtures ``runcore_instance``, ``runcore_recording_launcher`` and ``runcore_clock``.
Only the names used are imported (the suites import pytest; ``import runcore`` never does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runcore.testing.clock import VirtualClock
    from runcore.testing.coordinator_contract import CoordinatorContract
    from runcore.testing.executor_contract import ExecutorContract
    from runcore.testing.launcher_contract import LauncherContract
    from runcore.testing.output_store_contract import OutputStoreContract
    from runcore.testing.recording import RecordingLauncher
    from runcore.testing.storage_contract import StorageContract

__all__ = [
    "CoordinatorContract",
    "ExecutorContract",
    "LauncherContract",
    "OutputStoreContract",
    "RecordingLauncher",
    "StorageContract",
    "VirtualClock",
]

_WHERE = {
    "CoordinatorContract": "runcore.testing.coordinator_contract",
    "ExecutorContract": "runcore.testing.executor_contract",
    "LauncherContract": "runcore.testing.launcher_contract",
    "OutputStoreContract": "runcore.testing.output_store_contract",
    "RecordingLauncher": "runcore.testing.recording",
    "StorageContract": "runcore.testing.storage_contract",
    "VirtualClock": "runcore.testing.clock",
}


def __getattr__(name: str) -> Any:
    """Import each name on first use: the contract suites import pytest."""
    module = _WHERE.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'runcore.testing' has no attribute {name!r}")
