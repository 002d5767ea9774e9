"""The run worker: execute one stored run in this process, then exit.

::

    python -m runcore worker execute-run RUN_ID --instance CONFIG [--attempt ATTEMPT_ID]
        [--code-location LOCATION]
    python -m runcore worker warm --instance CONFIG [--preload LOCATION ...]

``CONFIG`` is the instance config as JSON text or a YAML/JSON file path; launchers pass the
JSON the instance gives them. The worker opens the storage itself, loads the run's code
location, executes the plan, writes events, and exits with a code that says how it ended:

====  =======================================================================
 0    the run succeeded
 1    the run failed (including a code location that does not load)
 2    bad input: unknown run id, malformed config, a database schema of another version
 3    the run was canceled
 4    the run was not startable (not STARTING: someone else started or canceled it, or
      the launch attempt the worker was started for was given up)
 5    the storage failed past its retries (a database server down for longer than the
      retry budget): what the run did from then on is not stored. Said on stderr, which
      the launcher puts in the failure reason the daemon records once the storage is back
====  =======================================================================

SIGTERM means cancel: the cancel is set, op code running on the main thread is interrupted
(:class:`~runcore.worker.steps.RunInterrupted`), and the run ends CANCELED. ``warm`` starts a
worker ahead of time (imports done, storage open, locations preloaded), prints ``ready``, and
waits for ``RUN_ID ATTEMPT_ID`` on standard input.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from runcore import _serde, _validate
from runcore import config as _config
from runcore.errors import ConfigError, RuncoreError, SchemaVersionError, StorageError
from runcore.events import Event, EventType
from runcore.launchers.base import hostname
from runcore.launchers.processes import PROCESS, process_handle
from runcore.runs import FailureKind, Run, RunStatus
from runcore.storage.base import WorkerRecord, move_run
from runcore.wiring import build_run_hooks, build_storage_and_outputs, step_pools_for
from runcore.worker import heartbeats
from runcore.worker.execution import execute_run
from runcore.worker.registry import WORKER_ENV, JobRegistry
from runcore.worker.steps import RunInterrupted, main_thread_in_op

if TYPE_CHECKING:
    from runcore.config import InstanceConfig
    from runcore.runs import Run
    from runcore.storage.base import InstanceStorage
    from runcore.worker.execution import StepPools
    from runcore.worker.hooks import RunHooks
    from runcore.worker.outputs import OutputStore

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANCELED = 3
EXIT_NOT_STARTABLE = 4
EXIT_STORAGE = 5

_EXIT_BY_STATUS = {
    RunStatus.SUCCESS: EXIT_SUCCESS,
    RunStatus.FAILURE: EXIT_FAILURE,
    RunStatus.CANCELED: EXIT_CANCELED,
}

#: How a launcher reads a worker's exit code.
EXIT_MEANINGS = {
    EXIT_SUCCESS: "the run succeeded",
    EXIT_FAILURE: "the run failed",
    EXIT_USAGE: "the worker was given bad input (unknown run, malformed config or storage)",
    EXIT_CANCELED: "the run was canceled",
    EXIT_NOT_STARTABLE: "the run was no longer startable",
    EXIT_STORAGE: "the worker's storage failed: the run's events from then on are missing",
}


@attrs.frozen
class WorkerResources:
    """What a worker needs, built from the instance config: no launcher, no coordinator."""

    storage: InstanceStorage
    output_store: OutputStore
    pools: StepPools | None
    jobs: JobRegistry
    #: Seconds between the run's heartbeats (``run_monitoring.worker_heartbeat_interval_seconds``).
    heartbeat_interval: float | None = None
    #: The instance's ``run_hooks``.
    hooks: tuple[RunHooks, ...] = ()


def parse_instance(config: str | dict[str, Any]) -> tuple[InstanceConfig, str]:
    """The instance config given as JSON text, a file path or a dict, and its base directory."""

    source: Any = config
    if isinstance(config, str) and config.lstrip().startswith("{"):
        try:
            source = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--instance: not valid JSON: {exc}") from exc
    return _config.load_instance_config(source)


def load_resources(config: str | dict[str, Any]) -> WorkerResources:
    """Build the worker's storage, output store, pool settings and job registry."""

    cfg, base_dir = parse_instance(config)
    storage, outputs = build_storage_and_outputs(cfg, base_dir)
    return WorkerResources(
        storage,
        outputs,
        step_pools_for(cfg),
        JobRegistry(),
        cfg.run_monitoring.worker_heartbeat_interval_seconds,
        tuple(build_run_hooks(cfg)),
    )


def _install_cancel_handler(cancel: threading.Event) -> None:
    """SIGTERM cancels the run. The handler takes no lock: ``cancel.set()`` would take the
    Event's lock, which the main thread may hold at that instant (inside ``Event.wait``), and
    the handler, running on the main thread, would wait for it forever. It writes a byte to a
    pipe (no lock Python code could hold), and the cancel relay thread, blocked reading it,
    sets the cancel."""

    write_fd, targets = _cancel_relay()
    targets[:] = [cancel]  # a worker process executes one run
    owner = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() == owner:  # not in a forked step worker, which shares the pipe
            with contextlib.suppress(OSError):
                os.write(write_fd, b"x")
        if main_thread_in_op():
            raise RunInterrupted("the run's worker received SIGTERM: the run is being canceled")

    signal.signal(signal.SIGTERM, on_sigterm)


@functools.cache
def _cancel_relay() -> tuple[int, list[threading.Event]]:
    """The cancel relay of this process: the write end of its pipe, and the cancels a byte on
    it sets. Its thread is started once per process (a warm worker's while warming up, so
    that starting a thread is not on the run's path) and sleeps in ``read`` until a SIGTERM."""
    read_fd, write_fd = os.pipe()
    targets: list[threading.Event] = []

    def relay() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            for event in list(targets):
                event.set()

    threading.Thread(target=relay, name="runcore-worker-cancel-relay", daemon=True).start()
    return write_fd, targets


def _record_self(storage: InstanceStorage, run: Run) -> None:
    """Record this process as the run's worker if its launcher has not (it may have died
    between starting this process and recording it), so that the run is never STARTED with
    no worker on record. A launcher's record (a code server's, say) is left as it is."""

    if run.attempt_id is None:
        return
    recorded = storage.get_worker_record(run.run_id)
    if recorded is not None and recorded.attempt_id == run.attempt_id:
        return
    storage.record_worker(  # never over a record the launcher wrote meanwhile
        WorkerRecord(
            run_id=run.run_id,
            attempt_id=run.attempt_id,
            kind=PROCESS,
            host=hostname(),
            handle=process_handle(os.getpid()),
        ),
        replace=False,
    )


def execute_run_in_worker(
    run_id: str,
    resources: WorkerResources,
    err: TextIO,
    attempt_id: str | None = None,
    code_location: str | None = None,
) -> int:
    """Execute stored run ``run_id``; returns the worker's exit code (see the module doc).

    ``attempt_id`` is the launch attempt the launcher started this worker for: if the run has
    moved on to another attempt (its launch was given up and retried), this worker does not
    start it. Without it, the run's current attempt is taken. ``code_location``: where this
    worker loads the job from, when the launcher maps the run's recorded location to a path
    of the worker's own (default: the recorded one).

    A storage that fails past its retries ends the worker (:data:`EXIT_STORAGE`), saying so
    on ``err``: what it could not write is lost, and its launcher or run monitoring ends the
    run once the storage answers again.
    """
    try:
        return _execute_run_in_worker(run_id, resources, err, attempt_id, code_location)
    except StorageError as exc:
        err.write(
            f"runcore worker: run {run_id}: the storage failed past its retries, so what the "
            f"run did from then on is not stored: {exc}\n"
        )
        return EXIT_STORAGE


def _execute_run_in_worker(
    run_id: str,
    resources: WorkerResources,
    err: TextIO,
    attempt_id: str | None,
    code_location: str | None,
) -> int:

    storage = resources.storage
    cancel = threading.Event()
    _install_cancel_handler(cancel)
    run = storage.get_run(run_id)
    if run is None:
        err.write(f"runcore worker: no run with id {run_id!r}\n")
        return EXIT_USAGE
    if run.status is not RunStatus.STARTING:
        if run.status is RunStatus.CANCELING:
            move_run(
                storage,
                run_id,
                [RunStatus.CANCELING],
                RunStatus.CANCELED,
                "the run was canceled before its worker started it",
            )
        err.write(f"runcore worker: run {run_id} is {run.status.value}, not STARTING\n")
        return EXIT_NOT_STARTABLE
    if attempt_id and attempt_id != run.attempt_id:
        err.write(
            f"runcore worker: run {run_id}: launch attempt {attempt_id} was given up (the run "
            f"is at attempt {run.attempt_id}); not starting it\n"
        )
        return EXIT_NOT_STARTABLE
    run = attrs.evolve(run, attempt_id=attempt_id or run.attempt_id)
    _record_self(storage, run)
    try:
        location = code_location or run.code_location
        if location is None:
            raise RuncoreError(
                f"run {run_id} has no code location, so no worker process can load job "
                f"{run.job_name!r}; submit a job defined in an importable module or file"
            )
        job = resources.jobs.load(location).get_job(run.job_name)
    except Exception as exc:
        move_run(
            storage,
            run_id,
            [RunStatus.STARTING],
            RunStatus.FAILURE,
            f"the worker could not load the run's job: {type(exc).__name__}: {exc}",
            error=exc,
            kind=FailureKind.LAUNCH_FAILURE,
        )
        err.write(f"runcore worker: run {run_id}: cannot load its job: {exc}\n")
        return EXIT_FAILURE
    final, _ = execute_run(
        run,
        job,
        storage=storage,
        output_store=resources.output_store,
        cancel=cancel,
        pools=resources.pools,
        heartbeat_interval=resources.heartbeat_interval,
        hooks=resources.hooks,
        capture="process",
    )
    return _EXIT_BY_STATUS.get(final.status, EXIT_FAILURE)


#: Set (to anything) in a worker's environment to have it get SIGTERM (that is, cancel its
#: run) when the process that started it dies. Linux only; elsewhere it is ignored.
DIE_WITH_PARENT_ENV = "RUNCORE_WORKER_DIE_WITH_PARENT"


def worker_env(
    extra: dict[str, str] | None = None, *, die_with_parent: bool = False
) -> dict[str, str]:
    """The environment for a run worker started from this process: this environment, with
    ``PYTHONPATH`` such that the worker imports what this process can (same ``sys.path``,
    the current directory included), marked as a worker, plus ``extra``."""

    env = dict(os.environ)
    paths = [os.getcwd() if p == "" else p for p in sys.path]
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in paths if p and os.path.isdir(p)] + ([existing] if existing else [])
    )
    env[WORKER_ENV] = "1"
    if die_with_parent:
        env[DIE_WITH_PARENT_ENV] = "1"
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    if not os.environ.get(DIE_WITH_PARENT_ENV) or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _startup_exit(exc: RuncoreError) -> int:
    """The exit code of a worker that could not start: a storage that failed (unreachable past
    the retries) is not bad input; a schema of another version is."""
    if isinstance(exc, StorageError) and not isinstance(exc, SchemaVersionError):
        return EXIT_STORAGE
    return EXIT_USAGE


def run_execute_command(
    run_id: str,
    config: str,
    err: TextIO,
    attempt_id: str | None = None,
    code_location: str | None = None,
) -> int:
    """``runcore worker execute-run``."""

    _die_with_parent()
    try:
        _validate.run_id(run_id, "runcore worker execute-run RUN_ID")
        resources = load_resources(config)
        resources.storage.start()
    except RuncoreError as exc:
        err.write(f"runcore worker: {type(exc).__name__}: {exc}\n")
        return _startup_exit(exc)
    try:
        return execute_run_in_worker(run_id, resources, err, attempt_id, code_location)
    finally:
        resources.storage.close()


def _warm_up() -> None:
    """Pay first-use costs before the run arrives: the JSON converters of runs and events
    (built on first use), the output store's pickle, and the modules a run imports when it
    starts (output capture and what it reads pipes with, resource usage): each import on the
    run's path delays its first step by milliseconds."""
    import fcntl  # noqa: F401 - capture's pending-bytes check
    import pickle  # noqa: F401 - imported ahead for FileOutputStore
    import resource  # noqa: F401 - the run's RESOURCE_METRICS event
    import select  # noqa: F401 - capture's pipe readers
    import termios  # noqa: F401 - capture's pending-bytes check

    import runcore.worker.capture  # noqa: F401 - execute_run(capture="process")

    heartbeats.prestart()
    _cancel_relay()

    _serde.loads_run(_serde.dumps_run(Run(job_name="warm_up")))
    _serde.loads_event(_serde.dumps_event(Event(run_id="warm_up", event_type=EventType.LOG)))


def run_warm_command(
    config: str,
    preload: Sequence[str],
    out: TextIO,
    err: TextIO,
    ready_fd: int | None = None,
) -> int:
    """``runcore worker warm``: get ready, say so, then execute the run named on stdin."""
    try:
        resources = load_resources(config)
        resources.storage.start()
    except RuncoreError as exc:
        err.write(f"runcore worker: {type(exc).__name__}: {exc}\n")
        return _startup_exit(exc)
    for location in preload:
        try:
            resources.jobs.load(location)
        except RuncoreError as exc:
            # Not fatal: a run of this location fails with the same error, recorded on it.
            err.write(f"runcore worker: preloading {location!r} failed: {exc}\n")
    _warm_up()
    out.write(f"ready {os.getpid()}\n")
    out.flush()
    if ready_fd is not None:  # tell the launcher, then let go of the pipe
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
    # "RUN_ID ATTEMPT_ID" (the attempt may be absent); an empty line: retired unused.
    words = sys.stdin.readline().split()
    if not words:
        return EXIT_SUCCESS  # the launcher closed the pipe: retired unused
    run_id, attempt_id = words[0], (words[1] if len(words) > 1 else None)
    try:
        return execute_run_in_worker(run_id, resources, err, attempt_id)
    finally:
        resources.storage.close()
