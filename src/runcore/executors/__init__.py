"""Executors: how the steps of one run are executed (serially, on threads, in processes)."""

from runcore.executors.base import Executor
from runcore.executors.in_process import InProcessExecutor
from runcore.executors.multiprocess import MultiprocessExecutor
from runcore.executors.thread_pool import ThreadPoolExecutor

__all__ = ["Executor", "InProcessExecutor", "MultiprocessExecutor", "ThreadPoolExecutor"]
