"""Launchers: where a run executes (threads here, worker processes, code servers, ECS).

Every launcher is imported on first use (see :mod:`runcore._lazy`), so ``import runcore``
loads neither ``subprocess``, ``grpc`` nor ``boto3``, and a run worker no launcher it does not
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore import _lazy
from runcore.launchers.base import HealthStatus, LaunchContext, RunLauncher, WorkerHealth

if TYPE_CHECKING:
    from runcore.launchers.code_server import CodeServerRunLauncher
    from runcore.launchers.ecs import EcsRunLauncher
    from runcore.launchers.routing import IsolationRouter
    from runcore.launchers.subprocess import SubprocessRunLauncher
    from runcore.launchers.thread_pool import ThreadPoolRunLauncher

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

__getattr__, __dir__ = _lazy.exports(
    __name__,
    globals(),
    {
        "CodeServerRunLauncher": "runcore.launchers.code_server",
        "EcsRunLauncher": "runcore.launchers.ecs",
        "IsolationRouter": "runcore.launchers.routing",
        "SubprocessRunLauncher": "runcore.launchers.subprocess",
        "ThreadPoolRunLauncher": "runcore.launchers.thread_pool",
    },
)
