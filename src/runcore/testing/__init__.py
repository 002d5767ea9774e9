"""Test helpers for runcore users: public contract suites and test doubles.

* ``StorageContract``: subclass it in a pytest module and provide a ``storage`` fixture to
  prove a custom :class:`~runcore.storage.InstanceStorage` keeps runcore's contract.
* ``LauncherContract``: the same for a custom :class:`~runcore.RunLauncher`, given an
  ``instance`` fixture that uses it.
* ``RecordingLauncher``: a launcher that records the runs it is asked to launch and runs
  nothing, to check a coordinator configuration without executing jobs.
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
