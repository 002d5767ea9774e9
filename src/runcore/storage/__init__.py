"""Storage backends: where runs, events, pool slots and heartbeats are remembered.

The backends are imported on first use (see :mod:`runcore._lazy`), so ``import runcore``
loads neither ``sqlite3`` nor psycopg, and a worker only the backend it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore import _lazy
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

if TYPE_CHECKING:
    from runcore.storage.memory import InMemoryStorage
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

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "InMemoryStorage": "runcore.storage.memory",
        "PostgresStorage": "runcore.storage.postgres",
        "SqliteStorage": "runcore.storage.sqlite",
    },
)
