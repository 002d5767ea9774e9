"""The public surface: pinned names, and an import that stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import runcore as rc

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(rc.__all__) == EXPECTED
    for name in rc.__all__:
        assert hasattr(rc, name), name


def test_errors_share_one_root() -> None:
    for name in rc.__all__:
        value = getattr(rc, name)
        if isinstance(value, type) and issubclass(value, Exception) and value is not rc.Failure:
            assert issubclass(value, rc.RuncoreError), name


def test_import_runcore_stays_light() -> None:
    heavy = [
        "sqlite3",
        "tenacity",
        "yaml",
        "cattrs",
        "grpc",
        "structlog",
        "psutil",
        "boto3",
        "psycopg",
        "asyncio",
        "pytest",  # only runcore.testing needs it
    ]
    code = (
        f"import json, sys, runcore\nprint(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
