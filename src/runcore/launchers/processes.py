"""Worker processes: starting them, knowing them again, signalling them, reaping them.

The one module for every launcher that gives a run a process of its own: the subprocess
launcher (cold and warm workers) and the code server's ``--run-mode process``.

* **Spawn.** :func:`spawn_run_worker` starts ``python -m runcore worker execute-run RUN_ID
  --instance CONFIG [--attempt ATTEMPT_ID]`` (a cold worker); :func:`spawn_warm_worker` starts
  ``runcore worker warm``, which imports ahead, says it is ready on a pipe
  (:meth:`WorkerProcess.check_ready`) and takes its run later on stdin
  (:meth:`WorkerProcess.assign`). Workers run this interpreter with this ``sys.path``
  (:func:`runcore.worker.process.worker_env`), in a new session (a Ctrl-C in the parent does
  not reach them), stdout discarded and stderr kept in a temporary file for the failure reason.
* **Record.** :meth:`WorkerProcess.record` is the run's
  :class:`~runcore.storage.base.WorkerRecord`: kind ``process``, this host, the pid and the
  process's start time.
* **Signal.** A process this process started is signalled through its ``Popen``
  (:meth:`WorkerProcess.terminate`: SIGTERM, which cancels the run, then SIGKILL once the grace
  period is over); its pid stays ours until we reap it. Any other worker process only through
  :func:`signal_worker`, after the identity checks below.
* **Reap.** :meth:`WorkerProcess.poll` and :meth:`WorkerProcess.wait` collect the exit (and
  deliver an overdue SIGKILL); :func:`end_run_after_exit` ends a run its worker left in
  progress, with the exit code or signal and the last lines of its stderr as the reason.

**Identity.** A pid alone names nothing for long: the process it named may be gone and the
number reused. So a launcher records, at spawn, the process's pid *and* its start time
(psutil's ``create_time``) in the run's :class:`~runcore.storage.base.WorkerRecord`, a storage
record no user input reaches. Before any signal, :func:`signal_worker` checks, in this order:

* the record is of a process runcore started for the run alone (kind ``process``), on this
  host;
* the pid is an int above 1, not this process and not this process's group;
* the live process with that pid started at the recorded time (checked again through a pidfd,
  which pins the process, so the signal cannot reach a process that took the pid meanwhile).

If any check fails, nothing is signalled and the worker counts as gone. Worker pids are never
read from tags.

``subprocess`` is imported when the first worker is spawned, so that ``import runcore`` (whose
thread launcher uses the identity side) does not load it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import attrs

from runcore.errors import RunLaunchError
from runcore.launchers.base import WorkerHealth, hostname
from runcore.runs import IN_PROGRESS_STATUSES, FailureKind, RunStatus
from runcore.storage.base import WorkerRecord, move_run

if TYPE_CHECKING:
    import subprocess

    from runcore.storage.base import RunStorage

#: Worker kinds: a process started for one run (runcore may signal it), and the host process
#: of a run on a thread (never signalled: it runs other things too).
PROCESS = "process"
THREAD = "thread"

#: How much of a worker's stderr (its end) a failure reason quotes, in bytes.
STDERR_TAIL = 2000


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


# --- processes this process started ----------------------------------------------------------


def describe_exit(code: int | None) -> str:
    """A worker's exit status in words (``code`` as ``Popen.returncode`` gives it)."""
    from runcore.worker.process import EXIT_MEANINGS

    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    meaning = EXIT_MEANINGS.get(code)
    return f"exited with code {code}" + (f" ({meaning})" if meaning else "")


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """``process.wait(timeout)``, or None if it is still running after ``timeout`` seconds."""
    import subprocess

    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@attrs.define(eq=False)
class WorkerProcess:
    """A worker process this process started, from its spawn until it is reaped.

    Its owner reaps it (:meth:`poll` or :meth:`wait`, from one thread) and then frees it
    (:meth:`close`); :meth:`terminate` and :meth:`signal` may come from any other thread.
    """

    process: subprocess.Popen[bytes]
    stderr: IO[bytes]
    #: When it was spawned (``time.time()``), its record's ``started_at``.
    started: float
    #: The code locations a warm worker was asked to import ahead.
    preloaded: tuple[str, ...] = ()
    #: When (``time.monotonic()``) SIGKILL follows an unanswered SIGTERM; None: not due.
    kill_at: float | None = None
    ready_fd: int | None = None  # a warm worker writes "ready" here once it is ready
    ready: bool = False

    @property
    def pid(self) -> int:
        """The worker's pid."""
        return self.process.pid

    def record(self, run_id: str, attempt_id: str) -> WorkerRecord:
        """The worker record of this process as the worker of ``run_id``'s attempt."""
        return WorkerRecord(
            run_id=run_id,
            attempt_id=attempt_id,
            kind=PROCESS,
            host=hostname(),
            handle=process_handle(self.pid),
            started_at=self.started,
        )

    # --- warm workers ---------------------------------------------------------------------

    def check_ready(self) -> bool:
        """Whether a warm worker has said it is ready (reads its ready pipe, never blocks)."""
        if self.ready or self.ready_fd is None:
            return self.ready
        try:
            data = os.read(self.ready_fd, 64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        self.ready = data.startswith(b"ready")
        self._close_ready()
        return self.ready

    def _close_ready(self) -> None:
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    def assign(self, run_id: str, attempt_id: str) -> bool:
        """Hand a warm worker its run (``RUN_ID ATTEMPT_ID`` on its stdin, then closed).

        False if it cannot take it (it has died): :meth:`retire` it and start another.
        """
        self._close_ready()
        assert self.process.stdin is not None, "only a warm worker takes its run on stdin"
        try:
            self.process.stdin.write(f"{run_id} {attempt_id}\n".encode())
            self.process.stdin.close()
        except OSError:
            return False
        return True

    def dismiss(self) -> None:
        """Tell an unused warm worker to exit (its stdin closes: no run comes)."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    # --- signals --------------------------------------------------------------------------

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to this process (our own child: its pid cannot have been reused, as
        we have not reaped it); False if it has exited."""
        if self.process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            self.process.send_signal(signum)
        return True

    def terminate(self, grace: float, *, force: bool = False) -> bool:
        """Stop the worker: SIGTERM (it cancels its run), and SIGKILL ``grace`` seconds later if
        it has not exited by then (:meth:`poll` and :meth:`wait` send it); ``force``: SIGKILL
        now. False if it had exited already."""
        if not self.signal(signal.SIGKILL if force else signal.SIGTERM):
            return False
        if not force:
            self.kill_at = time.monotonic() + grace
        return True

    def kill(self) -> None:
        """SIGKILL, now."""
        with contextlib.suppress(OSError):
            self.process.kill()

    # --- reaping --------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit code once the worker has exited (reaping it; negative: the signal that
        killed it), else None; sends the SIGKILL of a :meth:`terminate` whose grace is over."""
        code = self.process.poll()
        if code is None and self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.kill()
            self.kill_at = None
        return code

    def wait(self, poll_interval: float = 0.1) -> int:
        """Block until the worker exits (sending an overdue SIGKILL); its exit code."""
        while True:
            code = _wait(self.process, poll_interval)
            if code is not None:
                return code
            self.poll()

    def stderr_tail(self, limit: int = STDERR_TAIL) -> str:
        """The last ``limit`` bytes the worker wrote to stderr, as text ("" if unreadable)."""
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - limit))
            return self.stderr.read().decode(errors="replace").strip()
        return ""

    def exit_reason(self, code: int, whose: str = "") -> str:
        """Why the run ended with its worker: the exit in words and the stderr tail.

        ``whose`` follows the pid (e.g. ``" (of code server pid 12)"``).
        """
        reason = f"the run's worker process {self.pid}{whose} {describe_exit(code)}"
        tail = self.stderr_tail()
        if tail:
            reason += f"; its last output:\n{tail}"
        return reason

    def retire(self, grace: float = 0.0) -> None:
        """Stop and free a worker that holds no run: give it ``grace`` seconds to exit (after
        :meth:`dismiss`), then SIGKILL; reap it; :meth:`close` it."""
        if _wait(self.process, grace) is None:
            self.kill()
            _wait(self.process, 5.0)
        self.close()

    def close(self) -> None:
        """Free the files this process keeps for the worker (after it is reaped)."""
        self._close_ready()
        self.stderr.close()


def _spawn(args: Sequence[str], env: dict[str, str], *, warm: bool) -> WorkerProcess:
    """Start ``python -m runcore worker ARGS`` (a warm one gets a ready pipe and a stdin)."""
    import subprocess

    # Kept open for the worker's life (closed when it is reaped), so no context manager.
    stderr = tempfile.TemporaryFile(prefix="runcore-worker-")  # noqa: SIM115
    ready_read: int | None = None
    pass_fds: tuple[int, ...] = ()
    if warm:  # a pipe on which the warm worker says it is ready, then closes
        ready_read, ready_write = os.pipe()
        os.set_blocking(ready_read, False)
        pass_fds = (ready_write,)
        args = [*args, "--ready-fd", str(ready_write)]
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "runcore", "worker", *args],
            stdin=subprocess.PIPE if warm else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,  # a Ctrl-C in the parent does not reach the runs
            pass_fds=pass_fds,
        )
    except OSError as exc:
        stderr.close()
        if ready_read is not None:
            os.close(ready_read)
        raise RunLaunchError(f"cannot start a worker process: {exc}") from exc
    finally:
        for fd in pass_fds:
            os.close(fd)
    return WorkerProcess(process=process, stderr=stderr, started=time.time(), ready_fd=ready_read)


def _env(env: Mapping[str, str] | None, die_with_parent: bool) -> dict[str, str]:
    from runcore.worker.process import worker_env

    return worker_env(dict(env or {}), die_with_parent=die_with_parent)


def spawn_run_worker(
    run_id: str,
    attempt_id: str,
    instance_config: str,
    *,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> WorkerProcess:
    """Start a cold worker for one run: ``runcore worker execute-run``.

    ``attempt_id``: the launch attempt it may start ("": the run's current one).
    ``instance_config``: the config as JSON text or a file path. ``env``: extra environment
    variables. ``die_with_parent``: the worker cancels its run when this process dies (Linux).
    Raises :class:`~runcore.errors.RunLaunchError` if the process cannot be started.
    """
    args = ["execute-run", run_id, "--instance", instance_config]
    if attempt_id:
        args += ["--attempt", attempt_id]
    return _spawn(args, _env(env, die_with_parent), warm=False)


def spawn_warm_worker(
    instance_config: str, preload: Sequence[str] = (), *, env: Mapping[str, str] | None = None
) -> WorkerProcess:
    """Start a warm worker (``runcore worker warm``) that imports ``preload`` ahead, then waits
    for its run (:meth:`WorkerProcess.assign`). Raises
    :class:`~runcore.errors.RunLaunchError` if the process cannot be started."""
    args = ["warm", "--instance", instance_config]
    for location in preload:
        args += ["--preload", location]
    worker = _spawn(args, _env(env, False), warm=True)
    worker.preloaded = tuple(preload)
    return worker


def end_run_after_exit(
    storage: RunStorage,
    run_id: str,
    worker: WorkerProcess,
    code: int,
    *,
    canceled: bool | None = None,
    whose: str = "",
) -> None:
    """Reaping's last step: end ``run_id`` if its worker exited leaving it in progress.

    The reason is :meth:`WorkerProcess.exit_reason` (``whose`` goes after the pid).
    ``canceled``: whether the worker had been asked to cancel the run: True ends it CANCELED
    (through CANCELING); False ends it FAILURE (kind ``worker_died``, the exit code in the
    event's data), CANCELING or not; None (the owner cannot tell): CANCELED if the run is
    CANCELING, else FAILURE. A run the worker ended itself is left as it is.
    """
    run = storage.get_run(run_id)
    if run is None or run.status not in IN_PROGRESS_STATUSES:
        return
    reason = worker.exit_reason(code, whose)
    if canceled is None:
        canceled = run.status is RunStatus.CANCELING
        failing_from = [RunStatus.STARTING, RunStatus.STARTED]
    else:
        failing_from = [RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING]
        if canceled:
            in_flight = [RunStatus.STARTING, RunStatus.STARTED]
            move_run(storage, run_id, in_flight, RunStatus.CANCELING, "canceling")
    if canceled:
        move_run(storage, run_id, [RunStatus.CANCELING], RunStatus.CANCELED, f"canceled: {reason}")
        return
    move_run(
        storage,
        run_id,
        failing_from,
        RunStatus.FAILURE,
        reason,
        kind=FailureKind.WORKER_DIED,
        data={"exit_code": code},
    )
