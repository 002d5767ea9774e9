"""``runcore job execute``'s wait: follow a run's events until it ends, live on a terminal.

Ctrl-C once cancels the run and goes on following it until it ends; a second Ctrl-C forces
it: the run's worker is killed (``RunLauncher.terminate(force=True)``) and the run is marked
CANCELED. Exit codes: 0 success, 1 failure, 130 canceled, 137 forced.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from runcore.errors import RunTimeoutError
from runcore.runs import RunStatus
from runcore.storage.base import move_run
from runcore.worker.plan import build_plan

if TYPE_CHECKING:
    from runcore.definitions import Job
    from runcore.events import Event
    from runcore.instance import Instance
    from runcore.runs import Run

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_CANCELED = 130
EXIT_FORCED = 137

POLL_SECONDS = 0.1


class _PlainView:
    """One line per event: for pipes, files and ``--plain``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, event: Event) -> None:
        from runcore._terminal import event_line

        self.out.write(event_line(event) + "\n")
        self.out.flush()

    def update(self, run: Run) -> None:
        pass


def _step_keys(job: Job, run: Run) -> list[str]:

    try:
        plan = build_plan(job, run.step_keys_to_execute)
    except Exception:
        return list(job.ops)
    return list(plan.step_keys)


def _views(out: TextIO, run: Run, job: Job, plain: bool) -> Any:
    from runcore._terminal import is_terminal

    if plain or not is_terminal(out):
        return _PlainView(out)
    from runcore._terminal import LiveRunView

    return LiveRunView(out, run, _step_keys(job, run))


def follow_run(
    inst: Instance,
    run: Run,
    job: Job,
    out: TextIO,
    *,
    plain: bool = False,
    timeout: float | None = None,
) -> int:
    """Follow ``run`` to its end, showing its events; returns the exit code (module doc).

    The instance is closed on the way out (forced: without waiting for a run thread here).
    """

    presses: list[int] = []
    on_main = threading.current_thread() is threading.main_thread()
    previous: Any = None
    if on_main:
        # The handler only records: acting (storage writes, signals) happens in the loop.
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: presses.append(signum))
    deadline = None if timeout is None else time.monotonic() + timeout
    cursor: int | None = None
    canceling = forced = False
    current = run
    try:
        with _views(out, run, job, plain) as view:
            while True:
                current = inst.get_run(run.run_id)  # read before the events: none missed
                records = inst.storage.get_event_records(run.run_id, after_storage_id=cursor)
                for record in records:
                    cursor = record.storage_id
                    view.event(record.event)
                view.update(current)
                if current.status.is_terminal and not records:
                    break
                if len(presses) >= 2 and not forced:
                    view.note(
                        f"Ctrl-C again: forcing run {run.run_id[:8]} to stop (its worker is killed)"
                    )
                    _force(inst, run.run_id)
                    forced = True
                    current = inst.get_run(run.run_id)
                    break
                if presses and not canceling:
                    view.note(
                        f"Ctrl-C: canceling run {run.run_id[:8]} and waiting for it to end "
                        "(Ctrl-C again to force)"
                    )
                    inst.cancel_run(run.run_id)
                    canceling = True
                if deadline is not None and time.monotonic() >= deadline and not canceling:
                    inst.cancel_run(run.run_id)
                    raise RunTimeoutError(
                        f"run {run.run_id} is still {current.status.value} after {timeout} s "
                        "(--timeout); it was canceled"
                    )
                if not records:
                    time.sleep(POLL_SECONDS)
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)
        if not forced:
            inst.close()
    _summary(out, current)
    if forced:
        _close_forced(inst)
        return EXIT_FORCED
    if current.status is RunStatus.SUCCESS:
        return EXIT_SUCCESS
    if current.status is RunStatus.CANCELED:
        return EXIT_CANCELED
    return EXIT_FAILURE


def _summary(out: TextIO, run: Run) -> None:
    out.write(f"run {run.run_id} {run.status.value} in {_duration(run.started_at, run.ended_at)}\n")
    if run.failure_reason:
        out.write(f"reason: {run.failure_reason}\n")
    out.flush()


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = end - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _force(inst: Instance, run_id: str) -> None:
    """Kill the run's worker, then make sure the run is marked CANCELED."""

    with contextlib.suppress(Exception):
        inst.launcher.terminate(run_id, force=True)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the launcher's watcher may record the end itself
        if inst.get_run(run_id).status.is_terminal:
            return
        time.sleep(0.05)
    storage = inst.storage
    move_run(
        storage,
        run_id,
        [RunStatus.STARTED, RunStatus.STARTING],
        RunStatus.CANCELING,
        "cancel forced (Ctrl-C twice)",
    )
    move_run(
        storage,
        run_id,
        [RunStatus.CANCELING],
        RunStatus.CANCELED,
        "forced: the user pressed Ctrl-C twice; the run's worker was killed or abandoned",
    )


def _close_forced(inst: Instance) -> None:
    """Close the instance after a force, giving a run thread of this process 3 s at most."""
    closer = threading.Thread(target=inst.close, name="runcore-cli-close", daemon=True)
    closer.start()
    closer.join(3.0)
    if closer.is_alive():
        # A run thread of this process does not stop: forced means the process ends now
        # (the interpreter would otherwise wait for that thread at exit).
        import os
        import sys

        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.write("runcore: the run's thread did not stop; exiting anyway\n")
            sys.stderr.flush()
        os._exit(EXIT_FORCED)
