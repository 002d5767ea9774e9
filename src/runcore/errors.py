"""Every error runcore raises on purpose.

The tree::

    RuncoreError
    ├── DefinitionError            an op or job is defined wrongly (cycle, unknown upstream, ...)
    ├── CodeLocationError          a code location cannot be found or fails to import
    ├── UnknownJobError            a job name that the definitions or location do not hold
    ├── ConfigError                malformed configuration or input (names the field)
    │   └── InvalidRunIdError      not a run id at all (also a RunNotFoundError)
    ├── RunNotFoundError           no run with the given id
    ├── DuplicateRunError          a run id that is already stored
    ├── IllegalTransitionError     a run status change that the status machine forbids
    ├── StorageError               the run database cannot be opened, written or trusted
    │   └── SchemaVersionError     the database was written by a newer runcore (or is not ours)
    ├── OutputStoreError           a step output that cannot be stored or loaded
    ├── RunLaunchError             a launcher could not start a run
    ├── RunFailedError             ``execute_in_process`` of a run that failed (``raise_on_error``)
    ├── RunTimeoutError            ``wait_for_run`` gave up before the run ended
    └── InstanceClosedError        an ``Instance`` used after ``close()``

``Failure`` is not an error of runcore's: op code raises it to fail a step with a message and,
optionally, to forbid retries.

Messages name the thing that is wrong and, where there is one, the way to fix it. Errors of the
libraries below us (``sqlite3``, ``grpc``, ``botocore``) are translated at the boundary with
``raise ... from exc`` so the original stays on ``__cause__``.
"""

from __future__ import annotations

from typing import Any


class RuncoreError(Exception):
    """Root of every error runcore raises on purpose."""


class DefinitionError(RuncoreError):
    """An op, job or set of definitions is malformed; raised at definition time."""


class CodeLocationError(RuncoreError):
    """A code location (``"pkg.module:attr"`` or ``"path/file.py:attr"``) cannot be loaded."""


class UnknownJobError(RuncoreError):
    """A job name that is not defined where it was looked up."""


class ConfigError(RuncoreError):
    """Malformed configuration. The message names the key and what was expected."""


class RunNotFoundError(RuncoreError):
    """No run with the given id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class InvalidRunIdError(ConfigError, RunNotFoundError):
    """A run id that is not a canonical lowercase UUID: malformed input (a :class:`ConfigError`
    naming the field) and, since no run can have it, a :class:`RunNotFoundError` too."""

    def __init__(self, run_id: object, field: str = "run_id") -> None:
        Exception.__init__(
            self,
            f"{field}: {run_id!r} is not a run id; run ids are lowercase UUIDs such as "
            "'3f2a9c1e-0b7d-4e55-9a21-6c8f0d4b7e12'",
        )
        self.run_id = run_id if isinstance(run_id, str) else repr(run_id)
        self.field = field


class DuplicateRunError(RuncoreError):
    """A run with the same id is already stored."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"a run with id {run_id!r} already exists")
        self.run_id = run_id


class IllegalTransitionError(RuncoreError):
    """A run status change that the status machine does not allow."""


class StorageError(RuncoreError):
    """The storage cannot be opened, read or written."""


class SchemaVersionError(StorageError):
    """The database's schema is not one this runcore can use."""


class OutputStoreError(RuncoreError):
    """A step output cannot be stored or loaded by the output store."""


class RunLaunchError(RuncoreError):
    """A launcher could not start a run."""


class RunFailedError(RuncoreError):
    """A run executed in process failed; raised by ``execute_in_process(raise_on_error=True)``."""

    def __init__(self, message: str, *, run_id: str, step_key: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_key = step_key


class RunTimeoutError(RuncoreError):
    """``wait_for_run`` timed out; the run goes on."""


class InstanceClosedError(RuncoreError):
    """An ``Instance`` (or a component) was used after it was closed."""


class Failure(Exception):
    """Raised by op code to fail its step on purpose.

    ``allow_retry=False`` stops step retries (and, later, run retries) for this failure.
    ``metadata`` is JSON-able detail recorded on the step failure event.
    """

    def __init__(
        self,
        message: str = "",
        *,
        allow_retry: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.allow_retry = allow_retry
        self.metadata = dict(metadata or {})
