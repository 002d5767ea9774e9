"""What the ``runcore`` command draws: tables and the live view of a run, with rich.

Imported only by the command paths that draw, so ``import runcore`` never loads rich.
"""

from __future__ import annotations

import collections
import datetime
import shutil
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from runcore.events import Event
    from runcore.runs import Run

#: Tables and the live view are at most this wide.
MAX_WIDTH = 100
#: Runs are shown by the first characters of their id (any unique prefix is accepted back).
SHORT_ID = 8
INTERNAL_TAG_PREFIX = "runcore/"

_STATUS_STYLES = {
    "SUCCESS": "green",
    "FAILURE": "red",
    "CANCELED": "yellow",
    "CANCELING": "yellow",
    "STARTED": "cyan",
    "STARTING": "cyan",
    "QUEUED": "blue",
}


def is_terminal(out: TextIO) -> bool:
    """Whether ``out`` is an interactive terminal."""
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def console(out: TextIO) -> Console:
    """A console writing to ``out``, at most :data:`MAX_WIDTH` columns wide."""
    tty = is_terminal(out)
    width = min(shutil.get_terminal_size((MAX_WIDTH, 24)).columns, MAX_WIDTH) if tty else MAX_WIDTH
    return Console(file=out, width=width, highlight=False, soft_wrap=False, emoji=False)


def when(ts: float | None, *, date: bool = True) -> str:
    """A local time (with the date), or ``-``."""
    if ts is None:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S"
    return datetime.datetime.fromtimestamp(ts).strftime(fmt)


def duration(start: float | None, end: float | None) -> str:
    """How long from ``start`` to ``end`` (to now, while running), or ``-``."""
    if start is None:
        return "-"
    seconds = (time.time() if end is None else end) - start
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def shown_tags(tags: dict[str, str], *, all_tags: bool) -> str:
    """Tags as ``k=v`` text: the user's only, unless ``all_tags``."""
    return ", ".join(
        f"{key}={value}"
        for key, value in sorted(tags.items())
        if all_tags or not key.startswith(INTERNAL_TAG_PREFIX)
    )


def status_text(run: Run) -> Text:
    """The run's status, styled; ``CORRUPT`` for a run that could not be read back."""
    if getattr(run, "corrupt", None):
        return Text("CORRUPT", style="bold red")
    return Text(run.status.value, style=_STATUS_STYLES.get(run.status.value, ""))


def runs_table(runs: Sequence[Run], *, all_tags: bool) -> Table:
    """The ``runs list`` table."""
    table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    table.add_column("RUN", no_wrap=True, min_width=SHORT_ID)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("JOB", overflow="fold", max_width=24)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("TOOK", no_wrap=True, justify="right")
    table.add_column("TAGS", overflow="fold", ratio=1)
    for run in runs:
        table.add_row(
            run.run_id[:SHORT_ID],
            status_text(run),
            escape(run.job_name),
            when(run.started_at),
            duration(run.started_at, run.ended_at),
            escape(shown_tags(run.tags, all_tags=all_tags)),
        )
    return table


def simple_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A plain table of text."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def event_line(event: Event) -> str:
    """One event as one line of text (``runs show``, ``runs logs``, ``job execute --plain``)."""
    stamp = datetime.datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:-3]
    step = event.step_key or "-"
    stream = event.data.get("stream") if event.event_type.value == "LOG" else None
    if stream is not None:
        return f"{stamp}  {stream:18}  {step:20}  {event.message}".rstrip()
    detail = event.message
    data = {k: v for k, v in event.data.items() if k != "stream"}
    if data:
        detail += " " + " ".join(f"{k}={v}" for k, v in data.items())
    return f"{stamp}  {event.event_type.value:18}  {step:20}  {detail.strip()}".rstrip()


class LiveRunView:
    """A run's progress redrawn in place: steps done / running / failed, and the last log
    lines of the steps running. Notes and the end are printed above it."""

    LOG_LINES = 8

    def __init__(self, out: TextIO, run: Run, step_keys: Sequence[str]) -> None:
        self.console = console(out)
        self.run = run
        self.steps: dict[str, str] = dict.fromkeys(step_keys, "pending")
        self.logs: collections.deque[str] = collections.deque(maxlen=self.LOG_LINES)
        self.live = Live(
            self._render(),
            console=self.console,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveRunView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def note(self, text: str) -> None:
        """A line printed above the live view."""
        self.console.print(Text(text, style="bold yellow"))

    def event(self, event: Event) -> None:
        """Take one event of the run."""
        kind = event.event_type.value
        key = event.step_key
        if key is not None:
            state = {
                "STEP_START": "running",
                "STEP_SUCCESS": "done",
                "STEP_FAILURE": "failed",
                "STEP_SKIPPED": "skipped",
                "STEP_UP_FOR_RETRY": "retrying",
            }.get(kind)
            if state is not None:
                self.steps[key] = state
            if kind == "STEP_FAILURE":
                self.console.print(Text(f"step {key} failed: {event.message}", style="red"))
        if kind == "LOG" or (kind == "ENGINE_EVENT" and event.message):
            stream = event.data.get("stream")
            who = key or "run"
            prefix = f"{who} {stream}" if stream else f"{who} {event.level.lower()}"
            self.logs.append(f"{prefix} | {event.message}")
        self.live.update(self._render())

    def update(self, run: Run) -> None:
        """Take the run's latest state."""
        self.run = run
        self.live.update(self._render())

    def _render(self) -> Group:
        run = self.run
        counts = collections.Counter(self.steps.values())
        total = len(self.steps) or 1
        finished = counts["done"] + counts["failed"] + counts["skipped"]
        head = Text.assemble(
            (f"run {run.run_id[:SHORT_ID]} ", "bold"),
            (f"{run.job_name}  ", ""),
            status_text(run),
            f"  {duration(run.started_at or run.created_at, run.ended_at)}",
        )
        bar = ProgressBar(total=total, completed=finished, width=40)
        summary = Text(
            f"steps: {counts['done']} done, {counts['running'] + counts['retrying']} running, "
            f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['pending']} to go "
            f"(of {len(self.steps)})"
        )
        running = [k for k, v in self.steps.items() if v in ("running", "retrying")]
        parts: list[Text | ProgressBar] = [head, bar, summary]
        if running:
            parts.append(Text("running: " + ", ".join(running), style="cyan"))
        parts.extend(
            Text(line, style="dim", overflow="ellipsis", no_wrap=True) for line in self.logs
        )
        return Group(*parts)
