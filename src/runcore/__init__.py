"""runcore: an embeddable run-execution core for Python data pipelines.

Define ops and jobs, hand them to an :class:`Instance`, and it queues, launches, executes and
remembers their runs. See ``docs/`` for the guide; the public names are listed in ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runcore import _lazy
from runcore.definitions import (
    Definitions,
    Job,
    OpDefinition,
    RetryPolicy,
    job,
    load_code_location,
    op,
)
from runcore.errors import (
    CodeLocationError,
    ConfigError,
    DefinitionError,
    DuplicateRunError,
    Failure,
    IllegalTransitionError,
    InstanceClosedError,
    InvalidRunIdError,
    OutputStoreError,
    RuncoreError,
    RunFailedError,
    RunLaunchError,
    RunNotFoundError,
    RunTimeoutError,
    SchemaVersionError,
    StorageError,
    UnknownJobError,
)
from runcore.events import ErrorInfo, Event, EventRecord, EventType
from runcore.runs import FailureKind, Run, RunRecord, RunsFilter, RunStatus

if TYPE_CHECKING:
    from runcore.coordinators import DefaultRunCoordinator, QueuedRunCoordinator, RunCoordinator
    from runcore.daemon import Daemon
    from runcore.executors import (
        Executor,
        InProcessExecutor,
        MultiprocessExecutor,
        ThreadPoolExecutor,
    )
    from runcore.instance import Instance
    from runcore.launchers import RunLauncher, ThreadPoolRunLauncher, WorkerHealth
    from runcore.storage import InMemoryStorage, InstanceStorage
    from runcore.worker.context import OpContext
    from runcore.worker.outputs import FileOutputStore, InMemoryOutputStore, OutputStore
    from runcore.worker.result import ExecuteInProcessResult

#: Public names loaded on first use (PEP 562), so that ``import runcore`` costs what defining
#: ops and jobs needs: the instance, its coordinators, launchers, daemon and storages load
#: when a program first touches them.
_ON_FIRST_USE = {
    "DefaultRunCoordinator": "runcore.coordinators",
    "QueuedRunCoordinator": "runcore.coordinators",
    "RunCoordinator": "runcore.coordinators",
    "Daemon": "runcore.daemon",
    "Executor": "runcore.executors",
    "InProcessExecutor": "runcore.executors",
    "MultiprocessExecutor": "runcore.executors",
    "ThreadPoolExecutor": "runcore.executors",
    "Instance": "runcore.instance",
    "RunLauncher": "runcore.launchers",
    "ThreadPoolRunLauncher": "runcore.launchers",
    "WorkerHealth": "runcore.launchers",
    "InMemoryStorage": "runcore.storage",
    "InstanceStorage": "runcore.storage",
    "OpContext": "runcore.worker.context",
    "FileOutputStore": "runcore.worker.outputs",
    "InMemoryOutputStore": "runcore.worker.outputs",
    "OutputStore": "runcore.worker.outputs",
    "ExecuteInProcessResult": "runcore.worker.result",
}


__getattr__, __dir__ = _lazy.exports(__name__, globals(), _ON_FIRST_USE)

__version__ = "0.1.0.dev0"

__all__ = [
    "CodeLocationError",
    "ConfigError",
    "Daemon",
    "DefaultRunCoordinator",
    "DefinitionError",
    "Definitions",
    "DuplicateRunError",
    "ErrorInfo",
    "Event",
    "EventRecord",
    "EventType",
    "ExecuteInProcessResult",
    "Executor",
    "Failure",
    "FailureKind",
    "FileOutputStore",
    "IllegalTransitionError",
    "InMemoryOutputStore",
    "InMemoryStorage",
    "InProcessExecutor",
    "Instance",
    "InstanceClosedError",
    "InstanceStorage",
    "InvalidRunIdError",
    "Job",
    "MultiprocessExecutor",
    "OpContext",
    "OpDefinition",
    "OutputStore",
    "OutputStoreError",
    "QueuedRunCoordinator",
    "RetryPolicy",
    "Run",
    "RunCoordinator",
    "RunFailedError",
    "RunLaunchError",
    "RunLauncher",
    "RunNotFoundError",
    "RunRecord",
    "RunStatus",
    "RunTimeoutError",
    "RuncoreError",
    "RunsFilter",
    "SchemaVersionError",
    "StorageError",
    "ThreadPoolExecutor",
    "ThreadPoolRunLauncher",
    "UnknownJobError",
    "WorkerHealth",
    "__version__",
    "job",
    "load_code_location",
    "op",
]
