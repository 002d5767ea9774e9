"""Launchers: where a run executes (threads here; later processes, code servers, ECS)."""

from runcore.launchers.base import HealthStatus, LaunchContext, RunLauncher, WorkerHealth
from runcore.launchers.thread_pool import ThreadPoolRunLauncher

__all__ = ["HealthStatus", "LaunchContext", "RunLauncher", "ThreadPoolRunLauncher", "WorkerHealth"]
