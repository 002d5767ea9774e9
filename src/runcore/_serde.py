"""JSON across every boundary: one cattrs converter for runs, events and config.

Control-plane data (runs, events, RPC messages, config) is always JSON; nothing here pickles.
The converter is built on first use so that ``import runcore`` does not pay for cattrs.
"""

from __future__ import annotations

import enum
import functools
import json
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from runcore.events import Event, EventType
from runcore.runs import FailureKind, Run, RunStatus

if TYPE_CHECKING:
    import cattrs


T = TypeVar("T")


@functools.cache
def converter() -> cattrs.Converter:
    """The process-wide converter (stateless once built, safe to share between threads)."""
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=False, omit_if_default=True)
    return conv


def to_jsonable(obj: Any) -> Any:
    """``obj`` (an attrs instance, enum, list ...) as plain JSON-able Python data."""
    return converter().unstructure(obj)


def from_jsonable(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from plain data produced by :func:`to_jsonable`."""
    return converter().structure(data, cls)


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return json.dumps(to_jsonable(obj), separators=(",", ":"), default=_default)


def loads(text: str | bytes, cls: type[T]) -> T:
    """Parse JSON text produced by :func:`dumps` back into a ``cls``."""
    return from_jsonable(json.loads(text), cls)


def _fast_json(text: str | bytes) -> Any:
    """``text`` parsed by orjson (about four times faster than the standard library on
    runcore's small documents), or ``None`` where orjson refuses it (NaN, lone surrogates).
    orjson reads an integer past 64 bits as a float, so :func:`_plain` refuses floats that
    large, and such a document is read again by the standard library."""
    try:
        return _orjson_loads()(text)
    except ValueError:  # orjson.JSONDecodeError is one
        return None


@functools.cache
def _orjson_loads() -> Any:
    # Imported on first use: orjson brings datetime and dataclasses, which ``import runcore``
    # does not otherwise load.
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; a platform may lack it
        return json.loads
    return orjson.loads


def _default(value: Any) -> Any:
    # Values inside free-form ``data`` dicts that JSON cannot hold are recorded as their repr,
    # so a user's log field never breaks the event log.
    return repr(value)


def dumps_run(run: Run) -> str:
    """A run as JSON text (its ``corrupt`` marker is never stored)."""
    if run.corrupt is not None:
        run = attrs.evolve(run, corrupt=None)
    return dumps(run)


def loads_run(text: str | bytes) -> Run:
    """A run from JSON text."""

    return _plain(_fast_json(text), Run, _RUN_FIELDS) or from_jsonable(json.loads(text), Run)


def dumps_event(event: Event) -> str:
    """An event as JSON text."""
    return dumps(event)


def loads_event(text: str | bytes) -> Event:
    """An event from JSON text."""

    return _plain(_fast_json(text), Event, _EVENT_FIELDS) or from_jsonable(json.loads(text), Event)


# --- the fast path for runs and events read back -----------------------------------------------
#
# Reading a run back is most of what a query costs, and cattrs' general structuring is about
# half of that. Runs and events as runcore writes them hold only a few plain shapes, so
# :func:`_plain` builds them directly when every value has exactly the type its field wants,
# and returns ``None`` (cattrs decides, with its own conversions and errors) on anything else:
# the fast path never gives a different answer, it only gives up.

_TEXT, _TEXT_OR_NONE, _NUMBER, _NUMBER_OR_NONE, _TEXT_MAP, _TEXTS, _TEXTS_OR_NONE, _DICT = range(8)


def _enum_shape(cls: type[enum.Enum], optional: bool) -> dict[Any, Any]:
    values: dict[Any, Any] = {member.value: member for member in cls}
    if optional:
        values[None] = None
    return values


_RUN_FIELDS: dict[str, Any] = {
    "run_id": _TEXT,
    "job_name": _TEXT,
    "status": _enum_shape(RunStatus, False),
    "tags": _TEXT_MAP,
    "code_location": _TEXT_OR_NONE,
    "step_keys_to_execute": _TEXTS_OR_NONE,
    "parent_run_id": _TEXT_OR_NONE,
    "root_run_id": _TEXT_OR_NONE,
    "created_at": _NUMBER,
    "updated_at": _NUMBER_OR_NONE,
    "started_at": _NUMBER_OR_NONE,
    "ended_at": _NUMBER_OR_NONE,
    "failure_reason": _TEXT_OR_NONE,
    "failure_kind": _enum_shape(FailureKind, True),
    "pools": _TEXTS,
    "root_pools": _TEXTS_OR_NONE,
    "attempt_id": _TEXT_OR_NONE,
}
_EVENT_FIELDS: dict[str, Any] = {
    "run_id": _TEXT,
    "event_type": _enum_shape(EventType, False),
    "timestamp": _NUMBER,
    "step_key": _TEXT_OR_NONE,
    "message": _TEXT,
    "level": _TEXT,
    "data": _DICT,
    "error": {None: None},  # an error's ErrorInfo chain is left to cattrs
}


def _plain(data: Any, cls: type[T], fields: dict[str, Any]) -> T | None:
    """``cls`` built from ``data`` if every value is of the plain shape its field takes,
    else ``None``. Keys ``fields`` does not name are left out, as cattrs leaves them; a
    missing key takes the field's default."""
    if type(data) is not dict:
        return None
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        value = raw
        shape = fields.get(key)
        if shape is None:
            if key in _FIELD_NAMES[cls]:  # a field the fast path does not handle
                return None
            continue
        kind = type(value)
        if type(shape) is dict:  # an enum's values
            try:
                value = shape[raw]
            except (KeyError, TypeError):
                return None
        elif shape in (_TEXT, _TEXT_OR_NONE):
            if kind is not str and (value is not None or shape == _TEXT):
                return None
        elif shape in (_NUMBER, _NUMBER_OR_NONE):
            if kind is int:
                value = float(raw)
            elif kind is float:
                if not -_BIG < raw < _BIG:  # perhaps an integer orjson could not hold
                    return None
            elif value is not None or shape == _NUMBER:
                return None
        elif shape == _TEXT_MAP:
            if kind is not dict:
                return None
            for item in value.values():
                if type(item) is not str:
                    return None
        elif shape == _DICT:
            if kind is not dict or _has_big_float(raw):
                return None
        elif kind is list:
            for item in value:
                if type(item) is not str:
                    return None
        elif value is not None or shape == _TEXTS:
            return None
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError:  # a required field is missing: cattrs says so in its own words
        return None


#: Floats this large may be integers of 20 or more digits that orjson read as floats.
_BIG = float(2**63)


def _has_big_float(value: Any) -> bool:
    """Whether free-form data holds a float of :data:`_BIG` or more (see :func:`_fast_json`)."""
    kind = type(value)
    if kind is float:
        return not -_BIG < value < _BIG
    if kind is dict:
        return any(_has_big_float(item) for item in value.values())
    if kind is list:
        return any(_has_big_float(item) for item in value)
    return False


_FIELD_NAMES: dict[type, frozenset[str]] = {
    Run: frozenset(field.name for field in attrs.fields(Run)),
    Event: frozenset(field.name for field in attrs.fields(Event)),
}
