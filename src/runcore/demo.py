"""``runcore demo``: the main job on the embedded SQLite default, with a live view.

The view is a table of the run's steps, redrawn in place on a terminal (plain event lines
otherwise), fed by tailing the run's event log from storage, the way any other process could.
"""

from __future__ import annotations

import time
from typing import TextIO

import attrs

from runcore.events import Event, EventType
from runcore.instance import Instance
from runcore.runs import RunStatus

DEMO_LOCATION = "runcore.examples.etl:defs"
DEMO_JOB = "daily_sales"

_STATE_BY_EVENT = {
    EventType.STEP_START: "running",
    EventType.STEP_UP_FOR_RETRY: "retrying",
    EventType.STEP_SUCCESS: "succeeded",
    EventType.STEP_FAILURE: "failed",
    EventType.STEP_SKIPPED: "skipped",
}
_MARK = {
    "pending": "·",
    "running": "▶",
    "retrying": "↻",
    "succeeded": "✔",
    "failed": "✘",
    "skipped": "-",
}


@attrs.define
class _StepView:
    state: str = "pending"
    started: float | None = None
    ended: float | None = None
    note: str = ""
    attempts: int = 1


def _describe(event: Event) -> str:
    fields = " ".join(f"{k}={v}" for k, v in event.data.items())
    text = f"{event.message} {fields}".strip()
    if event.error is not None and event.event_type is not EventType.STEP_SUCCESS:
        text = f"{text} [{event.error}]".strip()
    return text


class LiveView:
    """Keeps the state of each step from events and renders it."""

    def __init__(self, step_keys: list[str], out: TextIO, *, redraw: bool) -> None:
        self.steps = {key: _StepView() for key in step_keys}
        self.out = out
        self.redraw = redraw
        self.run_status = RunStatus.STARTING
        self._drawn = 0

    def apply(self, event: Event) -> None:
        """Update the view with one event (and print it, in plain mode)."""
        if not self.redraw:
            step = event.step_key or "run"
            self.out.write(f"{event.event_type.value:18} {step:20} {_describe(event)}\n")
        if event.step_key is None or event.step_key not in self.steps:
            return
        view = self.steps[event.step_key]
        state = _STATE_BY_EVENT.get(event.event_type)
        if event.event_type is EventType.STEP_START:
            view.started = event.timestamp
        if event.event_type in (EventType.STEP_SUCCESS, EventType.STEP_FAILURE):
            view.ended = event.timestamp
        if event.event_type is EventType.STEP_UP_FOR_RETRY:
            view.attempts += 1
        if state is not None:
            view.state = state
        if event.event_type in (
            EventType.LOG,
            EventType.STEP_UP_FOR_RETRY,
            EventType.STEP_FAILURE,
            EventType.STEP_SKIPPED,
        ):
            view.note = _describe(event)

    def render(self, now: float) -> None:
        """Redraw the table in place (terminal mode only)."""
        if not self.redraw:
            return
        lines = [f"run status: {self.run_status.value}"]
        for key, view in self.steps.items():
            took = "" if view.started is None else f"{(view.ended or now) - view.started:5.1f}s"
            retry = f" (attempt {view.attempts})" if view.attempts > 1 else ""
            lines.append(
                f"  {_MARK[view.state]} {key:20} {view.state + retry:22} {took:>6}  "
                f"{view.note[:60]}"
            )
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for line in lines:
            self.out.write("\x1b[2K" + line + "\n")
        self.out.flush()
        self._drawn = len(lines)


def run_demo(*, db_path: str, out: TextIO, live: bool = True) -> int:
    """Run the demo job once on SQLite at ``db_path``, showing its progress; exit code."""

    inst = Instance.from_config({"storage": {"sqlite": {"path": db_path}}})
    with inst:
        job = inst.jobs.load(DEMO_LOCATION).get_job(DEMO_JOB)
        out.write(
            f"runcore demo: job {job.name!r} ({len(job.ops)} ops, {job.executor!r})\n"
            f"storage: SQLite at {db_path}\n\n"
        )
        run = inst.submit_run(job, tags={"demo": "true"}, code_location=DEMO_LOCATION)
        view = LiveView(list(job.order), out, redraw=live and out.isatty())
        cursor: int | None = None
        while True:
            records = inst.storage.get_event_records(run.run_id, after_storage_id=cursor)
            for record in records:
                view.apply(record.event)
                cursor = record.storage_id
            current = inst.get_run(run.run_id)
            view.run_status = current.status
            view.render(time.time())
            if current.status.is_terminal and not records:
                break
            time.sleep(0.1)
    took = (current.ended_at or 0) - (current.started_at or 0)
    out.write(f"\nrun {current.run_id} {current.status.value} in {took:.1f}s\n")
    if current.failure_reason:
        out.write(f"reason: {current.failure_reason}\n")
    report = (
        inst.output_store.get(current.run_id, "publish_report")
        if current.status is RunStatus.SUCCESS
        else None
    )
    if report:
        out.write("\n" + str(report) + "\n")
    out.write(f"\nsee it again with:\n  runcore runs list\n  runcore runs show {current.run_id}\n")
    return 0 if current.status is RunStatus.SUCCESS else 1
