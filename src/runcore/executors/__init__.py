"""Executors: how the steps of one run are executed (serially, on threads, in processes).

Each is imported on first use (see :mod:`runcore._lazy`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore import _lazy

if TYPE_CHECKING:
    from runcore.executors.base import Executor
    from runcore.executors.in_process import InProcessExecutor
    from runcore.executors.multiprocess import MultiprocessExecutor
    from runcore.executors.thread_pool import ThreadPoolExecutor

__all__ = [
    "Executor",
    "InProcessExecutor",
    "MultiprocessExecutor",
    "ThreadPoolExecutor",
]

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "Executor": "runcore.executors.base",
        "InProcessExecutor": "runcore.executors.in_process",
        "MultiprocessExecutor": "runcore.executors.multiprocess",
        "ThreadPoolExecutor": "runcore.executors.thread_pool",
    },
)
