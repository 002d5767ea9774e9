"""Worker processes by identity: recording who a run's process is, judging it, signalling it.

A pid alone names nothing for long: the process it named may be gone and the number reused.
So a launcher records, at spawn, the process's pid *and* its start time (psutil's
``create_time``) in the run's :class:`~runcore.storage.base.WorkerRecord`, a storage record
no user input reaches. Before any signal, :func:`signal_worker` checks, in this order:

* the record is of a process runcore started for the run alone (kind ``process``), on this
  host;
* the pid is an int above 1, not this process and not this process's group;
* the live process with that pid started at the recorded time (checked again through a pidfd,
  which pins the process, so the signal cannot reach a process that took the pid meanwhile).

If any check fails, nothing is signalled and the worker counts as gone. Worker pids are never
read from tags.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

from runcore.launchers.base import WorkerHealth, hostname

if TYPE_CHECKING:
    from runcore.storage.base import WorkerRecord

#: Worker kinds: a process started for one run (runcore may signal it), and the host process
#: of a run on a thread (never signalled: it runs other things too).
PROCESS = "process"
THREAD = "thread"


def start_time(pid: int) -> float | None:
    """The start time of live process ``pid`` (psutil's ``create_time``), or ``None``."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError, ValueError, OverflowError):
        return None


def process_handle(pid: int) -> dict[str, Any]:
    """The handle a launcher records for process ``pid`` (its pid and start time)."""
    return {"pid": pid, "create_time": start_time(pid)}


def _recorded_pid(record: WorkerRecord) -> tuple[int, float] | None:
    """The (pid, start time) a record holds, if both are well-formed."""
    pid = record.handle.get("pid")
    created = record.handle.get("create_time")
    if isinstance(pid, bool) or not isinstance(pid, int):
        return None
    if isinstance(created, bool) or not isinstance(created, int | float):
        return None
    return pid, float(created)


def _same_start(pid: int, created: float) -> bool:
    now = start_time(pid)
    return now is not None and abs(now - created) < 1e-6


def identity_problem(record: WorkerRecord, *, signalable: bool) -> str | None:
    """Why the process ``record`` names may not be acted on here (``None``: it may).

    ``signalable`` also requires a process of the run alone (kind ``process``).
    """
    if signalable and record.kind != PROCESS:
        return f"the run's worker is a {record.kind!r}, not a process of its own"
    if record.host != hostname():
        return f"the run's worker runs on host {record.host!r}, not this one"
    recorded = _recorded_pid(record)
    if recorded is None:
        return "the worker record holds no valid pid and start time"
    pid, _ = recorded
    if pid <= 1 or pid == os.getpid():
        return f"pid {pid} is never a run's worker"
    with contextlib.suppress(OSError):
        if signalable and pid == os.getpgid(0):
            return f"pid {pid} is this process's group"
    return None


def process_health(record: WorkerRecord, what: str = "worker process") -> WorkerHealth:
    """Health of the process a worker record names, on this host.

    DEAD if it is gone, a zombie, or its pid now belongs to a process that started at another
    time (reused); RUNNING if the same process lives; UNKNOWN for another host.
    """
    if record.host != hostname():
        return WorkerHealth.unknown(f"the run's {what} runs on host {record.host!r}")
    recorded = _recorded_pid(record)
    if recorded is None:
        return WorkerHealth.unknown("the worker record holds no valid pid and start time")
    pid, created = recorded
    import psutil

    try:
        process = psutil.Process(pid)
        if abs(float(process.create_time()) - created) >= 1e-6:
            return WorkerHealth.dead(f"the {what} {pid} is gone (its pid was reused)")
        if process.status() == psutil.STATUS_ZOMBIE:
            # Dead, waiting for its parent to reap it (which may be never).
            return WorkerHealth.dead(f"the {what} {pid} has exited (not yet reaped)")
    except psutil.NoSuchProcess:
        return WorkerHealth.dead(f"the {what} {pid} is gone")
    except (psutil.Error, OSError, ValueError, OverflowError):
        return WorkerHealth.unknown(f"cannot inspect the {what} {pid}")
    return WorkerHealth.running()


def signal_worker(record: WorkerRecord, signum: int) -> bool:
    """Send ``signum`` to the run's own worker process, if every identity check holds.

    Returns whether the signal was sent. Never raises for a process that is gone or not ours.
    """
    if identity_problem(record, signalable=True) is not None:
        return False
    recorded = _recorded_pid(record)
    assert recorded is not None
    pid, created = recorded
    if not _same_start(pid, created):
        return False
    pidfd_open = getattr(os, "pidfd_open", None)
    send = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open is None or send is None:  # not Linux >= 5.3: check, then signal by pid
        with contextlib.suppress(OSError):
            os.kill(pid, signum)
            return True
        return False
    try:
        fd = pidfd_open(pid)
    except OSError:
        return False
    try:
        # The pidfd pins the process: if it started at the recorded time now, the signal
        # reaches that process and no other.
        if not _same_start(pid, created):
            return False
        send(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
