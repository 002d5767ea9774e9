"""Run hooks: code that observes runs as a worker executes them.

Subclass :class:`RunHooks` and override what you need; every method is a no-op by default.
A worker calls them on the thread that stored the event, *after* it is stored, so what a
hook sees is in storage already. A hook must be quick (it runs on the run's path) and must
not raise: an exception from a hook is logged and never fails the run.

Hooks come from the instance config (``run_hooks: [{class: "pkg.mod:Hooks", config: {}}]``),
so every worker of the instance builds the same ones, whatever process or host it runs on;
``Instance(run_hooks=[...])`` adds objects for runs executing in this process.
What builds on them: run profiles (``RESOURCE_METRICS``), metrics, status pages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runcore.events import EventType

if TYPE_CHECKING:
    from runcore.events import Event
    from runcore.runs import Run

log = logging.getLogger("runcore.hooks")


class RunHooks:
    """Observe runs: their start, every stored event, step boundaries, their end."""

    def on_run_start(self, run: Run) -> None:
        """``run`` is STARTED in this worker."""

    def on_event(self, run: Run, event: Event) -> None:
        """``event`` of ``run`` was stored (every event, the step boundaries included)."""

    def on_step_start(self, run: Run, step_key: str) -> None:
        """A step of ``run`` started."""

    def on_step_end(self, run: Run, step_key: str, event: Event) -> None:
        """A step of ``run`` ended: ``event`` is its STEP_SUCCESS, STEP_FAILURE or
        STEP_SKIPPED."""

    def on_run_end(self, run: Run) -> None:
        """``run`` reached its final status (``run.status``) in this worker."""


class HookCaller:
    """Calls every hook, logging (never raising) what a hook raises."""

    __slots__ = ("hooks",)

    def __init__(self, hooks: Sequence[RunHooks] = ()) -> None:
        self.hooks = tuple(hooks)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def _call(self, name: str, *args: object) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("run hook %r failed in %s; the run goes on", hook, name)

    def run_start(self, run: Run) -> None:
        self._call("on_run_start", run)

    def run_end(self, run: Run) -> None:
        self._call("on_run_end", run)

    def events(self, run: Run, events: Sequence[Event]) -> None:
        for event in events:
            self._call("on_event", run, event)
            if event.step_key is None:
                continue
            if event.event_type is EventType.STEP_START:
                self._call("on_step_start", run, event.step_key)
            elif event.event_type in _STEP_ENDS:
                self._call("on_step_end", run, event.step_key, event)


_STEP_ENDS = frozenset({EventType.STEP_SUCCESS, EventType.STEP_FAILURE, EventType.STEP_SKIPPED})
