"""Storage backends: where runs, events, pool slots and heartbeats are remembered.

``SqliteStorage`` and ``PostgresStorage`` are imported on first use, so ``import runcore``
loads neither ``sqlite3`` nor psycopg.
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
    from runcore.storage.postgres import PostgresStorage
    from runcore.storage.sqlite import SqliteStorage

__all__ = [
    "DaemonHeartbeat",
    "EventStorage",
    "HeartbeatStorage",
    "InMemoryStorage",
    "InstanceStorage",
    "PoolStorage",
    "PostgresStorage",
    "RunStorage",
    "SlotLease",
    "SqliteStorage",
    "move_run",
]


def __getattr__(name: str) -> Any:
    if name == "SqliteStorage":
        from runcore.storage.sqlite import SqliteStorage

        return SqliteStorage
    if name == "PostgresStorage":
        from runcore.storage.postgres import PostgresStorage

        return PostgresStorage
    raise AttributeError(f"module 'runcore.storage' has no attribute {name!r}")
