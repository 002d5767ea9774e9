"""Test helpers for runcore users: public contract suites and test doubles.

* ``StorageContract``: subclass it in a pytest module and provide a ``storage`` fixture to
  prove a custom :class:`~runcore.storage.InstanceStorage` keeps runcore's contract.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StorageContract"]


def __getattr__(name: str) -> Any:
    if name == "StorageContract":
        from runcore.testing.storage_contract import StorageContract

        return StorageContract
    raise AttributeError(f"module 'runcore.testing' has no attribute {name!r}")
