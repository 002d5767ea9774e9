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

from runcore.events import ErrorInfo, Event, EventType
from runcore.runs import FailureKind, Run, RunStatus
from runcore.runs import _tags as copy_tags

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
    return _fast_jsonable(obj) or converter().unstructure(obj)


def _fast_jsonable(obj: Any) -> dict[str, Any] | None:
    """A run's or an event's plain data by the fast path (below), or ``None``."""
    kind = type(obj)
    if kind is Run:
        return _run_jsonable(obj)
    if kind is Event:
        return _event_jsonable(obj)
    return None


def from_jsonable(data: Any, cls: type[T]) -> T:
    """Build a ``cls`` from plain data produced by :func:`to_jsonable`."""
    return converter().structure(data, cls)


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text.

    A run or an event of plain values is written by orjson (about nine times faster than the
    standard library here): the same document, with non-ASCII characters as UTF-8 rather than
    ``\\u`` escapes. What orjson writes differently or refuses (NaN and infinities, integers
    past 64 bits, lone surrogates, keys that are not strings) goes the standard library's way.
    """
    fast = _fast_jsonable(obj)
    if fast is not None:
        try:
            text: str = _orjson_dumps()(fast).decode()
            return text
        except TypeError:  # orjson.JSONEncodeError is one: a big integer, a lone surrogate
            return _ENCODE(fast)
    return _ENCODE(converter().unstructure(obj))


def loads(text: str | bytes, cls: type[T]) -> T:
    """Parse JSON text produced by :func:`dumps` back into a ``cls``."""
    return from_jsonable(json.loads(text), cls)


def _fast_json(text: str | bytes) -> Any:
    """``text`` parsed by orjson (about four times faster than the standard library on
    runcore's small documents), or ``None`` where orjson refuses it (NaN, lone surrogates).
    orjson reads an integer past 64 bits as a float, so :func:`_build` refuses floats that
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


@functools.cache
def _orjson_dumps() -> Any:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; a platform may lack it
        return lambda value: _ENCODE(value).encode()
    return orjson.dumps


def _default(value: Any) -> Any:
    # Values inside free-form ``data`` dicts that JSON cannot hold are recorded as their repr,
    # so a user's log field never breaks the event log.
    return repr(value)


#: ``json.dumps(value, separators=(",", ":"), default=_default)`` without building an encoder
#: on every call (json.dumps caches only the encoder of its default arguments).
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_default).encode


def dumps_run(run: Run) -> str:
    """A run as JSON text (its ``corrupt`` marker is never stored)."""
    if run.corrupt is not None:
        run = attrs.evolve(run, corrupt=None)
    return dumps(run)


def loads_run(text: str | bytes) -> Run:
    """A run from JSON text."""

    return _build(_fast_json(text), Run) or from_jsonable(json.loads(text), Run)


def dumps_event(event: Event) -> str:
    """An event as JSON text."""
    return dumps(event)


def loads_event(text: str | bytes) -> Event:
    """An event from JSON text."""

    return _build(_fast_json(text), Event) or from_jsonable(json.loads(text), Event)


# --- the fast path for runs and events read back -----------------------------------------------
#
# Reading a run back is most of what a query costs, and cattrs' general structuring is about
# half of that. Runs and events as runcore writes them hold only a few plain shapes, so
# :func:`_build` builds them directly when every value has exactly the type its field wants,
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


def _build(data: Any, cls: type[T]) -> T | None:
    """``cls`` built from ``data`` if every value is of the plain shape its field takes,
    else ``None``. Keys that name no field are left out, as cattrs leaves them; a missing key
    takes the field's default.

    The work is done by a function compiled for the document's keys, in their order (runcore
    writes a few such layouts): straight-line checks, then every slot set once, without the
    keyword-argument dict and the frozen ``__init__``'s per-field ``object.__setattr__``.
    """
    if type(data) is not dict:
        return None
    layouts = _BUILDERS[cls]
    keys = tuple(data)
    build = layouts.get(keys)
    if build is None:
        if len(layouts) >= _MAX_LAYOUTS:  # documents of many shapes: not runcore's own
            return None
        build = layouts[keys] = _compile(cls, keys)
    return build(data)  # type: ignore[no-any-return]


#: How many key layouts of one class get a compiled builder.
_MAX_LAYOUTS = 256


def _never(data: dict[str, Any]) -> None:
    """The builder of a layout the fast path does not take."""
    return None


def _check(shape: Any, i: int) -> list[str]:
    """Lines that check (and, for enums and ints, convert) local ``v{i}`` as ``shape``."""
    v = f"v{i}"
    if type(shape) is dict:  # an enum's values (or only None)
        return [
            "try:",
            f"    {v} = s{i}[{v}]",
            "except (KeyError, TypeError):",
            "    return None",
        ]
    if shape == _TEXT:
        return [f"if type({v}) is not str:", "    return None"]
    if shape == _TEXT_OR_NONE:
        return [f"if {v} is not None and type({v}) is not str:", "    return None"]
    if shape in (_NUMBER, _NUMBER_OR_NONE):
        none = f"{v} is not None and " if shape == _NUMBER_OR_NONE else ""
        return [
            f"if type({v}) is int:",
            f"    {v} = float({v})",
            f"elif {none}(type({v}) is not float or not -BIG < {v} < BIG):",
            "    return None",  # perhaps an integer orjson could not hold
        ]
    if shape == _TEXT_MAP:
        return [
            f"if type({v}) is not dict:",
            "    return None",
            f"for x in {v}.values():",
            "    if type(x) is not str:",
            "        return None",
        ]
    if shape == _DICT:
        return [f"if type({v}) is not dict or has_big_float({v}):", "    return None"]
    lines = [
        f"if type({v}) is not list:",
        "    return None",
        f"for x in {v}:",
        "    if type(x) is not str:",
        "        return None",
    ]
    if shape == _TEXTS_OR_NONE:
        return [f"if {v} is not None:"] + ["    " + line for line in lines]
    return lines


def _compile(cls: type[Any], keys: tuple[str, ...]) -> Any:
    """The builder of ``cls`` from documents with exactly ``keys``, in that order."""
    shapes = _SHAPES[cls]
    if any(key not in shapes and key in _FIELD_NAMES[cls] for key in keys):
        return _never  # a field the fast path does not handle
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls, "BIG": _BIG}
    scope["has_big_float"] = _has_big_float
    lines = ["def build(data):"]
    for i, key in enumerate(keys):
        if key not in shapes:
            continue  # not a field: left out
        scope[f"s{i}"] = shapes[key]
        lines += [f"    v{i} = data[{key!r}]"] + ["    " + line for line in _check(shapes[key], i)]
    lines.append("    obj = new(cls)")
    for j, field in enumerate(attrs.fields(cls)):
        scope[f"set{j}"] = cls.__dict__[field.name].__set__  # the slot's own setter
        if field.name in keys:
            value = f"v{keys.index(field.name)}"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            if field.default.takes_self:
                return _never
            scope[f"d{j}"] = field.default.factory
            value = f"d{j}()"
        elif field.default is attrs.NOTHING:
            return _never  # a required field is missing: cattrs says so in its own words
        else:
            scope[f"d{j}"] = field.default
            value = f"d{j}"
        fresh_tags = field.name in keys and field.converter is copy_tags
        if field.converter is not None and not fresh_tags:  # a parsed dict is the run's own
            scope[f"c{j}"] = field.converter
            value = f"c{j}({value})"
        lines.append(f"    set{j}(obj, {value})")
    lines.append("    return obj")
    exec("\n".join(lines), scope)  # the code is made here, from field names only
    return scope["build"]


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
_SHAPES: dict[type, dict[str, Any]] = {Run: _RUN_FIELDS, Event: _EVENT_FIELDS}
_BUILDERS: dict[type, dict[tuple[str, ...], Any]] = {Run: {}, Event: {}}


# --- the fast path for runs and events written -------------------------------------------------
#
# The converter's unstructuring (with ``omit_if_default``) is most of what serialising a run or
# an event costs, and it calls a field's default factory to compare with it (a new uuid4 for
# ``run_id``). Runs and events as runcore makes them hold only plain values, so these build the
# same dict directly, in field order, leaving out what the converter leaves out; anything not
# plain (a value of another type, a subclass) returns ``None`` and the converter decides.
#
# One deliberate difference: the converter omits a ``created_at``/``timestamp`` equal to the
# time at the moment of writing (it compares with a fresh ``time.time()``), which would make
# the reader take its own clock instead. These always write them.

_PLAIN_SCALARS = (str, int, bool, type(None))
_INF = float("inf")


def _plain_value(value: Any) -> bool:
    """Whether ``value`` is JSON data the converter would return unchanged (a copy of it) and
    orjson writes as the standard library does: ``str``/``int``/``bool``/``None``, finite
    floats, and lists of them and dicts of them with string keys."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind is float:
        return _finite(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain_value(item):
                return False
        return True
    if kind is list:
        return all(_plain_value(item) for item in value)
    return False


def _finite(value: Any) -> bool:
    return type(value) is float and -_INF < value < _INF


def _texts(value: Any) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def _run_jsonable(run: Run) -> dict[str, Any] | None:
    if type(run.run_id) is not str or type(run.job_name) is not str:
        return None
    out: dict[str, Any] = {"run_id": run.run_id, "job_name": run.job_name}
    status = run.status
    if type(status) is not RunStatus:
        return None
    if status is not RunStatus.NOT_STARTED:
        out["status"] = status.value
    tags = run.tags
    if type(tags) is not dict:
        return None
    if tags:
        for key, value in tags.items():
            if type(key) is not str or type(value) is not str:
                return None
        out["tags"] = dict(tags)
    for name in ("code_location", "step_keys_to_execute", "parent_run_id", "root_run_id"):
        value = getattr(run, name)
        if value is None:
            continue
        if type(value) is not str and not (name == "step_keys_to_execute" and _texts(value)):
            return None
        out[name] = list(value) if type(value) is list else value
    if not _finite(run.created_at):
        return None
    out["created_at"] = run.created_at
    for name in ("updated_at", "started_at", "ended_at"):
        value = getattr(run, name)
        if value is None:
            continue
        if not _finite(value):
            return None
        out[name] = value
    if run.failure_reason is not None:
        if type(run.failure_reason) is not str:
            return None
        out["failure_reason"] = run.failure_reason
    if run.failure_kind is not None:
        if type(run.failure_kind) is not FailureKind:
            return None
        out["failure_kind"] = run.failure_kind.value
    if not _texts(run.pools):
        return None
    if run.pools:
        out["pools"] = list(run.pools)
    if run.root_pools is not None:
        if not _texts(run.root_pools):
            return None
        out["root_pools"] = list(run.root_pools)
    for name in ("attempt_id", "corrupt"):
        value = getattr(run, name)
        if value is not None:
            if type(value) is not str:
                return None
            out[name] = value
    return out


def _event_jsonable(event: Event) -> dict[str, Any] | None:
    if type(event.run_id) is not str or type(event.event_type) is not EventType:
        return None
    if not _finite(event.timestamp):
        return None
    out: dict[str, Any] = {
        "run_id": event.run_id,
        "event_type": event.event_type.value,
        "timestamp": event.timestamp,
    }
    if event.step_key is not None:
        if type(event.step_key) is not str:
            return None
        out["step_key"] = event.step_key
    if type(event.message) is not str or type(event.level) is not str:
        return None
    if event.message != "":
        out["message"] = event.message
    if event.level != "INFO":
        out["level"] = event.level
    data = event.data
    if type(data) is not dict or not _plain_value(data):
        return None
    if data:
        out["data"] = data
    if event.error is not None:
        error = _error_jsonable(event.error)
        if error is None:
            return None
        out["error"] = error
    return out


def _error_jsonable(error: ErrorInfo) -> dict[str, Any] | None:
    if type(error) is not ErrorInfo:
        return None
    if type(error.type) is not str or type(error.message) is not str:
        return None
    if type(error.traceback) is not str:
        return None
    out: dict[str, Any] = {"type": error.type, "message": error.message}
    if error.traceback != "":
        out["traceback"] = error.traceback
    if error.cause is not None:
        cause = _error_jsonable(error.cause)
        if cause is None:
            return None
        out["cause"] = cause
    return out
