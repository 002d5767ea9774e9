"""JSON across every boundary: one cattrs converter for runs, events and config.

Control-plane data (runs, events, RPC messages, config) is always JSON; nothing here pickles.
The converter is built on first use so that ``import runcore`` does not pay for cattrs.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, TypeVar

from runcore.events import Event
from runcore.runs import Run

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


def _default(value: Any) -> Any:
    # Values inside free-form ``data`` dicts that JSON cannot hold are recorded as their repr,
    # so a user's log field never breaks the event log.
    return repr(value)


def dumps_run(run: Run) -> str:
    """A run as JSON text (its ``corrupt`` marker is never stored)."""
    if run.corrupt is not None:
        import attrs

        run = attrs.evolve(run, corrupt=None)
    return dumps(run)


def loads_run(text: str | bytes) -> Run:
    """A run from JSON text."""

    return loads(text, Run)


def dumps_event(event: Event) -> str:
    """An event as JSON text."""
    return dumps(event)


def loads_event(text: str | bytes) -> Event:
    """An event from JSON text."""

    return loads(text, Event)
