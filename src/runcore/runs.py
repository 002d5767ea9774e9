"""Runs: the status machine, the ``Run`` record, filters and the ``runcore/`` tag names."""

from __future__ import annotations

import enum
import functools
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

import attrs

from runcore import _validate
from runcore.errors import ConfigError, IllegalTransitionError

TAG_PREFIX = "runcore/"
PRIORITY_TAG = "runcore/priority"
ISOLATION_TAG = "runcore/isolation"
MAX_RETRIES_TAG = "runcore/max_retries"
RETRY_STRATEGY_TAG = "runcore/retry_strategy"
MAX_RUNTIME_TAG = "runcore/max_runtime"
BACKFILL_TAG = "runcore/backfill"
SCHEDULE_NAME_TAG = "runcore/schedule_name"
SENSOR_NAME_TAG = "runcore/sensor_name"
RETRY_NUMBER_TAG = "runcore/retry_number"
RETRY_OF_TAG = "runcore/retry_of"

#: The control tags users may set, in one place (API, CLI, job and op tags, config defaults).
#: Every other tag under ``runcore/`` is runcore's own bookkeeping: refused from users, written
#: only by runcore. See docs/security.md.
USER_CONTROL_TAGS: frozenset[str] = frozenset(
    {
        PRIORITY_TAG,
        ISOLATION_TAG,
        MAX_RETRIES_TAG,
        RETRY_STRATEGY_TAG,
        MAX_RUNTIME_TAG,
        BACKFILL_TAG,
    }
)
#: Tags runcore writes itself (on retries, and on runs of schedules and sensors).
RUNCORE_OWN_TAGS: frozenset[str] = frozenset(
    {RETRY_NUMBER_TAG, RETRY_OF_TAG, SCHEDULE_NAME_TAG, SENSOR_NAME_TAG}
)
#: The tags whose values runcore reads, checked when a run is read back (all ``runcore/``).
_INTERPRETED_TAGS: frozenset[str] = USER_CONTROL_TAGS | RUNCORE_OWN_TAGS
_TAG_CHOICES = {
    ISOLATION_TAG: ("isolated", "non_isolated"),
    RETRY_STRATEGY_TAG: ("from_failure", "all_steps"),
}


def check_tag_value(key: str, value: str) -> None:
    """Raise :class:`~runcore.errors.ConfigError` (naming the tag) if a ``runcore/`` tag's
    value is malformed; other tags take any string."""

    field = f"tag {key}"
    if key == PRIORITY_TAG:
        _validate.int_text(field, value)
    elif key in (MAX_RETRIES_TAG, RETRY_NUMBER_TAG):
        _validate.int_text(field, value, minimum=0)
    elif key == MAX_RUNTIME_TAG:
        _validate.float_text(field, value, above=0)
    elif key == RETRY_OF_TAG:
        _validate.run_id(value, field)
    elif key in _TAG_CHOICES and value not in _TAG_CHOICES[key]:
        raise ConfigError(f"{field}: must be one of {', '.join(_TAG_CHOICES[key])}, got {value!r}")


def check_user_tags(tags: Mapping[str, str] | None, where: str = "tags") -> dict[str, str]:
    """Tags as a user gave them, checked; returns a copy.

    Keys and values must be valid UTF-8 strings, keys non-empty; under ``runcore/`` only the
    documented control tags (:data:`USER_CONTROL_TAGS`) are accepted, with well-formed values.
    Raises :class:`~runcore.errors.ConfigError` naming the tag.
    """

    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ConfigError(f"{where}: expected a mapping of strings to strings, got {tags!r}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: tag keys must be non-empty strings, got {key!r}")
        _validate.text(key, f"{where}: tag key")
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: tag {key!r} has a {type(value).__name__} value {value!r}; tag values "
                f"are strings (write {str(value)!r})"
            )
        _validate.text(value, f"{where}: tag {key!r}")
        if key.startswith(TAG_PREFIX):
            if key not in USER_CONTROL_TAGS:
                allowed = ", ".join(sorted(USER_CONTROL_TAGS))
                raise ConfigError(
                    f"{where}: tag {key!r} is reserved: tags under {TAG_PREFIX!r} belong to "
                    f"runcore, and users may set only {allowed}. Rename the tag (e.g. drop "
                    "the 'runcore/' prefix)"
                )
            try:
                check_tag_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        out[key] = value
    return out


def stored_tags_problem(tags: object) -> str | None:
    """Why tags read back from storage cannot be trusted, or None: not a mapping of strings,
    or a ``runcore/`` tag with a malformed value. Unknown ``runcore/`` tags (an older runcore's
    bookkeeping) are ignored, never interpreted."""
    if not isinstance(tags, dict):
        return f"its tags are not a mapping ({type(tags).__name__})"
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"tag {key!r} is not a string of strings"
    if _INTERPRETED_TAGS.isdisjoint(tags):  # most runs: no tag runcore reads
        return None
    for key, value in tags.items():
        if key in _INTERPRETED_TAGS:
            problem = _control_tag_problem(key, value)
            if problem is not None:
                return problem
    return None


@functools.lru_cache(maxsize=4096)
def _control_tag_problem(key: str, value: str) -> str | None:
    # Control tags take few distinct values (priorities, "isolated", retry numbers), and every
    # run read back checks its own: remembered, the check costs a lookup.
    try:
        check_tag_value(key, value)
    except ConfigError as exc:
        return str(exc)
    return None


class FailureKind(enum.Enum):
    """Why a run failed, for run retries and for people: set from the RUN_FAILURE event's
    ``data["failure_kind"]``."""

    USER_CODE = "user_code"  # an op raised
    WORKER_DIED = "worker_died"  # the process or thread executing the run is gone
    START_TIMEOUT = "start_timeout"  # stuck in STARTING past run_monitoring.start_timeout
    MAX_RUNTIME = "max_runtime"  # ran past its maximum runtime
    LAUNCH_FAILURE = "launch_failure"  # the launcher could not start it
    ENGINE = "engine"  # runcore itself failed (storage, a bug)


class RunStatus(enum.Enum):
    """Where a run is in its life. See ``LEGAL_TRANSITIONS`` for the moves between them."""

    NOT_STARTED = "NOT_STARTED"
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    CANCELING = "CANCELING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """SUCCESS, FAILURE and CANCELED: nothing leaves them."""
        return self in TERMINAL_STATUSES

    @property
    def is_in_progress(self) -> bool:
        """STARTING, STARTED and CANCELING: what run limits count."""
        return self in IN_PROGRESS_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CANCELED})
IN_PROGRESS_STATUSES = frozenset({RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING})

#: Every legal status change. A status not listed as a key has no way out.
LEGAL_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.NOT_STARTED: frozenset({RunStatus.QUEUED, RunStatus.STARTING, RunStatus.CANCELED}),
    RunStatus.QUEUED: frozenset({RunStatus.STARTING, RunStatus.CANCELED, RunStatus.FAILURE}),
    RunStatus.STARTING: frozenset(
        {RunStatus.STARTED, RunStatus.QUEUED, RunStatus.CANCELING, RunStatus.FAILURE}
    ),
    RunStatus.STARTED: frozenset({RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CANCELING}),
    RunStatus.CANCELING: frozenset({RunStatus.CANCELED, RunStatus.FAILURE}),
    RunStatus.SUCCESS: frozenset(),
    RunStatus.FAILURE: frozenset(),
    RunStatus.CANCELED: frozenset(),
}


def check_transition(from_statuses: Iterable[RunStatus], to_status: RunStatus) -> None:
    """Raise ``IllegalTransitionError`` unless ``to_status`` is reachable from every source.

    Storages call this before any I/O, so an illegal request never touches the database.
    """
    bad = [s for s in from_statuses if to_status not in LEGAL_TRANSITIONS[s]]
    if bad:
        names = ", ".join(s.value for s in bad)
        allowed = ", ".join(
            sorted(t.value for s in bad for t in LEGAL_TRANSITIONS[s]) or ["nothing (terminal)"]
        )
        raise IllegalTransitionError(
            f"a run cannot move from {names} to {to_status.value}; from {names} it may move to: "
            f"{allowed}"
        )


def priority_of(tags: Mapping[str, str]) -> int:
    """The ``runcore/priority`` tag as a signed 64-bit int: 0 when absent, and when malformed
    or out of range (refused at submit; such a stored run is marked corrupt when read)."""
    raw = tags.get(PRIORITY_TAG)
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        return 0
    return value if -(2**63) <= value < 2**63 else 0


def new_run_id() -> str:
    """A fresh, random run id (a UUID4 in its 36-character text form)."""
    return str(uuid.uuid4())


def _tags(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value) if value else {}


@attrs.frozen(kw_only=True)
class Run:
    """One execution of a job. Immutable: a status change makes a new ``Run`` (``attrs.evolve``).

    ``code_location`` says where a worker in another process can load the job from
    (``"pkg.module:defs"`` or ``"path/file.py:defs"``); ``None`` for a job that lives only in the
    submitting process. ``step_keys_to_execute`` limits the run to a subset of the job's steps
    (op selection, re-execution). Times are Unix seconds. ``pools`` lists the concurrency pools
    its steps use; ``root_pools`` the pools of its root steps (``None`` when a root step uses
    none), which is what holds a run in the queue at op granularity.

    Who executes the run is not on the run: launchers record it in storage as a
    :class:`~runcore.storage.base.WorkerRecord`, where no user input can reach it.
    """

    run_id: str = attrs.field(factory=new_run_id)
    job_name: str
    status: RunStatus = RunStatus.NOT_STARTED
    tags: dict[str, str] = attrs.field(factory=dict, converter=_tags)
    code_location: str | None = None
    step_keys_to_execute: list[str] | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    created_at: float = attrs.field(factory=time.time)
    updated_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    failure_reason: str | None = None
    failure_kind: FailureKind | None = None
    pools: list[str] = attrs.field(factory=list)
    root_pools: list[str] | None = None
    #: The current launch attempt: a new id with every move to STARTING. Only the worker of
    #: this attempt may move the run to STARTED (an orphan of an older attempt cannot).
    attempt_id: str | None = None
    #: Set (never stored) when the stored run could not be read back as a valid run: why. A
    #: corrupt run is reported and skipped by the daemon's duties; runcore never acts on it.
    corrupt: str | None = attrs.field(default=None, eq=False)

    @property
    def is_finished(self) -> bool:
        """True once the run is in a terminal status."""
        return self.status.is_terminal

    @property
    def priority(self) -> int:
        """The ``runcore/priority`` tag as an int (0 when absent)."""
        return priority_of(self.tags)


@attrs.frozen
class RunRecord:
    """A stored run with its storage-assigned sequence number (``storage_id``, increasing)."""

    storage_id: int
    run: Run


@attrs.frozen(kw_only=True)
class RunsFilter:
    """Which runs to return. Every given field must match (AND); ``None`` means "any".

    ``tags`` matches runs that carry every given key with the given value; a value that is a
    sequence matches any of its items. ``created_after``/``created_before`` are Unix seconds
    (exclusive bounds); ``updated_after`` matches runs whose last status change (or creation) is
    later than it.
    """

    run_ids: Sequence[str] | None = None
    job_name: str | None = None
    statuses: Sequence[RunStatus] | None = None
    tags: Mapping[str, str | Sequence[str]] | None = None
    created_after: float | None = None
    created_before: float | None = None
    updated_after: float | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None

    def matches(self, run: Run) -> bool:
        """Whether ``run`` passes this filter (the in-memory reference semantics)."""
        if self.run_ids is not None and run.run_id not in self.run_ids:
            return False
        if self.job_name is not None and run.job_name != self.job_name:
            return False
        if self.statuses is not None and run.status not in self.statuses:
            return False
        if self.created_after is not None and not run.created_at > self.created_after:
            return False
        if self.created_before is not None and not run.created_at < self.created_before:
            return False
        if self.updated_after is not None and not (
            (run.updated_at or run.created_at) > self.updated_after
        ):
            return False
        if self.parent_run_id is not None and run.parent_run_id != self.parent_run_id:
            return False
        if self.root_run_id is not None and run.root_run_id != self.root_run_id:
            return False
        for key, want in (self.tags or {}).items():
            have = run.tags.get(key)
            if have is None:
                return False
            if isinstance(want, str):
                if have != want:
                    return False
            elif have not in want:
                return False
        return True
