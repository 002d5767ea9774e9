"""Test helpers for runcore users: public contract suites and test doubles.

* ``StorageContract``: subclass it in a pytest module and provide a ``storage`` fixture to
  prove a custom :class:`~runcore.storage.InstanceStorage` keeps runcore's contract.
* ``LauncherContract``: the same for a custom :class:`~runcore.RunLauncher`, given an
  ``instance`` fixture that uses it.
* ``RecordingLauncher``: a launcher that records the runs it is asked to launch and runs
  nothing, to check a coordinator configuration without executing jobs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LauncherContract", "RecordingLauncher", "StorageContract"]


def __getattr__(name: str) -> Any:
    if name == "LauncherContract":
        from runcore.testing.launcher_contract import LauncherContract

        return LauncherContract
    if name == "RecordingLauncher":
        from runcore.testing.recording import RecordingLauncher

        return RecordingLauncher
    if name == "StorageContract":
        from runcore.testing.storage_contract import StorageContract

        return StorageContract
    raise AttributeError(f"module 'runcore.testing' has no attribute {name!r}")
