"""Storage backends: where runs, events, pool slots and heartbeats are remembered.

``SqliteStorage`` is imported on first use, so ``import runcore`` does not load ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runcore.storage.base import (
    DaemonHeartbeat,
    EventStorage,
    HeartbeatStorage,
    InstanceStorage,
    PoolStorage,
    RunStorage,
    SlotLease,
    move_run,
)
from runcore.storage.memory import InMemoryStorage

if TYPE_CHECKING:
    from runcore.storage.sqlite import SqliteStorage

__all__ = [
    "DaemonHeartbeat",
    "EventStorage",
    "HeartbeatStorage",
    "InMemoryStorage",
    "InstanceStorage",
    "PoolStorage",
    "RunStorage",
    "SlotLease",
    "SqliteStorage",
    "move_run",
]


def __getattr__(name: str) -> Any:
    if name == "SqliteStorage":
        from runcore.storage.sqlite import SqliteStorage

        return SqliteStorage
    raise AttributeError(f"module 'runcore.storage' has no attribute {name!r}")
