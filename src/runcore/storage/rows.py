"""What every backend does to the runs it stores and reads back.

A transition is applied the same way everywhere (:func:`apply_transition`,
:func:`status_event`, :func:`attempt_allows`), and every row read back is parsed once and
either trusted or marked corrupt (:func:`read_run`, :func:`queued_row_ok`,
:func:`worker_record_from_row`); :func:`writable` refuses to change a corrupt run. The
interfaces these serve are in :mod:`runcore.storage.base`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs

from runcore import _serde, _validate
from runcore.errors import StorageError
from runcore.events import STATUS_EVENT_TYPES, Event
from runcore.runs import FailureKind, Run, RunStatus, stored_tags_problem
from runcore.storage.base import WorkerRecord

T = TypeVar("T")


def _evolved(obj: T, names: tuple[str, ...], changes: dict[str, Any]) -> T:
    """``attrs.evolve(obj, **changes)`` for a class whose init arguments are ``names``,
    without evolve's per-call look-up of the class's fields (runs and events are copied on
    every transition)."""
    for name in names:
        if name not in changes:
            changes[name] = getattr(obj, name)
    return type(obj)(**changes)


_RUN_ARGS = tuple(field.name for field in attrs.fields(Run) if field.init)
_EVENT_ARGS = tuple(field.name for field in attrs.fields(Event) if field.init)


def status_event(run: Run, to_status: RunStatus, event: Event | None, now: float) -> Event:
    """The event recording ``run``'s move to ``to_status`` (``event`` if the caller gave one),
    stamped ``now``, the transition's time by the storage's clock: not the clock of the host
    that made the event, which may be off."""
    if event is not None:
        return _evolved(event, _EVENT_ARGS, {"timestamp": now})
    return Event(run_id=run.run_id, event_type=STATUS_EVENT_TYPES[to_status], timestamp=now)


def new_attempt_id() -> str:
    """A fresh launch attempt id: 32 random hex digits (what ``uuid.uuid4().hex`` gives, for a
    fifth of its cost)."""
    return os.urandom(16).hex()


def attempt_allows(run: Run, to_status: RunStatus, attempt_id: str | None) -> bool:
    """Whether a transition of ``run`` given ``attempt_id`` may happen: always into STARTING
    (which starts a new attempt) or without an attempt id, else only for the current one."""
    return to_status is RunStatus.STARTING or attempt_id is None or attempt_id == run.attempt_id


def apply_transition(
    run: Run,
    to_status: RunStatus,
    now: float,
    failure_reason: str | None,
    event: Event | None,
    *,
    attempt_id: str | None = None,
) -> Run:
    """``run`` after moving to ``to_status`` at ``now`` (the fields every backend updates).

    A move to STARTING starts a new attempt: ``attempt_id`` if given, else a fresh one.
    """
    changes: dict[str, Any] = {"status": to_status, "updated_at": now}
    if to_status is RunStatus.STARTING:
        changes["attempt_id"] = attempt_id or new_attempt_id()
    elif to_status is RunStatus.QUEUED:
        changes["attempt_id"] = None  # the attempt is given up: no worker may record for it
    if to_status is RunStatus.STARTED and run.started_at is None:
        changes["started_at"] = now
    if to_status.is_terminal:
        changes["ended_at"] = now
    reason = failure_reason
    if reason is None and to_status is RunStatus.FAILURE and event is not None:
        reason = event.message or (str(event.error) if event.error else None)
    if reason is not None:
        changes["failure_reason"] = reason
    if to_status is RunStatus.FAILURE and event is not None:
        kind = event.data.get("failure_kind")
        with contextlib.suppress(ValueError):
            changes["failure_kind"] = FailureKind(kind) if kind else FailureKind.ENGINE
    return _evolved(run, _RUN_ARGS, changes)


#: A status column's text to its status (``RunStatus(text)`` and ``.value`` are slow enum paths).
_STATUSES = {status.value: status for status in RunStatus}


def run_problem(run: Run, run_id: str | None = None, status: str | None = None) -> str | None:
    """Why a run read back from storage cannot be trusted, or ``None``.

    ``run_id`` and ``status`` are the row's own columns, where a backend keeps them beside the
    run's JSON: they must agree with it.
    """

    own_id = run.run_id
    if not _validate.is_run_id(own_id):
        return f"its run id {own_id!r} is not a lowercase UUID"
    if run_id is not None and run_id != own_id:
        return f"its row is for run {run_id!r} but its JSON is of run {own_id!r}"
    if status is not None and _STATUSES.get(status) is not run.status:
        return f"its status column says {status!r} but its JSON says {run.status.value!r}"
    parent, root = run.parent_run_id, run.root_run_id
    if parent is not None and not _validate.is_run_id(parent):
        return f"its parent_run_id {parent!r} is not a lowercase UUID"
    if root is not None and not _validate.is_run_id(root):
        return f"its root_run_id {root!r} is not a lowercase UUID"
    problem = stored_tags_problem(run.tags)
    return None if problem is None else f"its tags cannot be trusted: {problem}"


def read_run(
    body: str | bytes,
    *,
    run_id: str | None = None,
    status: str | None = None,
    job_name: str | None = None,
) -> Run:
    """The one parse step for a run read back from storage.

    Returns the run, or, when the stored data cannot be trusted (JSON that does not parse,
    an id that is not a UUID, a status that disagrees with its column, a malformed control
    tag), a run marked :attr:`~runcore.runs.Run.corrupt` with the reason: reported, skipped
    by the daemon's duties and never changed, while every other run goes on. ``run_id``,
    ``status`` and ``job_name`` are the row's columns, used to describe a run whose JSON is
    unreadable.
    """

    try:
        run = _serde.loads_run(body)
    except Exception as exc:  # anything the stored text makes the parser raise
        try:
            known = RunStatus(status) if status is not None else RunStatus.NOT_STARTED
        except ValueError:
            known = RunStatus.NOT_STARTED
        return Run(
            run_id=str(run_id) if run_id is not None else "?",
            job_name=str(job_name) if job_name is not None else "?",
            status=known,
            corrupt=f"its stored JSON cannot be read ({type(exc).__name__}: {exc})"[:500],
        )
    problem = run_problem(run, run_id, status)
    return run if problem is None else attrs.evolve(run, corrupt=problem)


def queued_row_ok(row: Sequence[Any]) -> bool:
    """Whether a queued run's narrow row (storage id, run id, tags, pools, root pools) can be
    trusted; a row that cannot is skipped by admission, like a corrupt run."""

    _, run_id, tags, pools, root_pools = row
    if not _validate.is_run_id(run_id) or (tags and stored_tags_problem(tags) is not None):
        return False
    # Null or empty pool lists (most runs) are fine without a call.
    return (not pools or _names_ok(pools)) and (not root_pools or _names_ok(root_pools))


def _names_ok(names: object) -> bool:
    """Whether ``names`` (pool names read back, not empty) is a list of strings."""
    if type(names) is not list:
        return False
    for name in names:  # noqa: SIM110 - a loop, not all(<generator>): 10,000 rows a pass
        if type(name) is not str:
            return False
    return True


def writable(run: Run) -> Run:
    """``run`` if runcore may change it; a :class:`~runcore.errors.StorageError` for a run
    marked corrupt (runcore never rewrites what it cannot read)."""
    if run.corrupt is not None:
        raise StorageError(
            f"run {run.run_id} is corrupt in storage ({run.corrupt}); runcore will not change "
            "it. Inspect it with `runcore runs show`, then delete or repair the row"
        )
    return run


def worker_record_from_row(row: Sequence[Any]) -> WorkerRecord | None:
    """A :class:`WorkerRecord` from a row (run_id, attempt_id, kind, host, handle JSON,
    started_at, heartbeat_at), or ``None`` if the row does not hold a valid one."""
    try:
        handle = json.loads(row[4]) if isinstance(row[4], str | bytes) else row[4]
        if not isinstance(handle, dict):
            return None
        return WorkerRecord(
            run_id=str(row[0]),
            attempt_id=str(row[1]),
            kind=str(row[2]),
            host=str(row[3]),
            handle=handle,
            started_at=float(row[5]),
            heartbeat_at=None if row[6] is None else float(row[6]),
        )
    except (TypeError, ValueError):
        return None


def now() -> float:
    """The storages' clock (Unix seconds)."""
    return time.time()
