"""Launchers: where a run executes (threads here, worker processes, code servers, ECS).

``SubprocessRunLauncher``, ``CodeServerRunLauncher`` and ``EcsRunLauncher`` are imported on
first use, so ``import runcore`` loads neither ``subprocess``, ``grpc`` nor ``boto3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runcore.launchers.base import HealthStatus, LaunchContext, RunLauncher, WorkerHealth
from runcore.launchers.routing import IsolationRouter
from runcore.launchers.thread_pool import ThreadPoolRunLauncher

if TYPE_CHECKING:
    from runcore.launchers.code_server import CodeServerRunLauncher
    from runcore.launchers.ecs import EcsRunLauncher
    from runcore.launchers.subprocess import SubprocessRunLauncher

__all__ = [
    "CodeServerRunLauncher",
    "EcsRunLauncher",
    "HealthStatus",
    "IsolationRouter",
    "LaunchContext",
    "RunLauncher",
    "SubprocessRunLauncher",
    "ThreadPoolRunLauncher",
    "WorkerHealth",
]


def __getattr__(name: str) -> Any:
    if name == "SubprocessRunLauncher":
        from runcore.launchers.subprocess import SubprocessRunLauncher

        return SubprocessRunLauncher
    if name == "CodeServerRunLauncher":
        from runcore.launchers.code_server import CodeServerRunLauncher

        return CodeServerRunLauncher
    if name == "EcsRunLauncher":
        from runcore.launchers.ecs import EcsRunLauncher

        return EcsRunLauncher
    raise AttributeError(f"module 'runcore.launchers' has no attribute {name!r}")
