"""The ``runcore`` command.

::

    runcore [--config FILE] job list LOCATION
    runcore [--config FILE] job execute LOCATION JOB [--tag KEY=VALUE ...]
    runcore [--config FILE] runs list [--job NAME] [--status STATUS ...] [--tag KEY=VALUE ...]
                                      [--limit N] [--json]
    runcore [--config FILE] runs show RUN_ID [--json]
    runcore [--config FILE] runs why RUN_ID
    runcore [--config FILE] runs cancel RUN_ID
    runcore [--config FILE] instance concurrency set POOL N | get POOL | list | delete POOL
    runcore [--config FILE] instance migrate
    runcore [--config FILE] daemon [--interval SECONDS]
    runcore [--config FILE] daemon status
    runcore demo [--db PATH] [--plain]
    runcore code-server --location LOC [--host H] [--port P] [--max-workers N] ...
    runcore worker execute-run RUN_ID --instance CONFIG [--attempt ID]  (what launchers start)

The instance config is ``--config``, else ``$RUNCORE_CONFIG``, else ``./runcore.yaml`` if it
exists, else the embedded default: SQLite at ``.runcore/runs.db``.
Exit codes: 0 success, 1 a run that did not succeed, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from runcore.definitions import absolute_location
from runcore.errors import RuncoreError

if TYPE_CHECKING:
    from runcore.instance import Instance

DEFAULT_CONFIG_FILE = "runcore.yaml"
DEFAULT_CONFIG: dict[str, Any] = {"storage": {"sqlite": {"path": ".runcore/runs.db"}}}


class UsageError(RuncoreError):
    """Bad command-line input."""


def _parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag takes KEY=VALUE, got {item!r}")
        tags[key] = value
    return tags


def config_source(explicit: str | None) -> str | dict[str, Any]:
    """Which instance config the command uses (see the module docstring)."""
    if explicit:
        return explicit
    env = os.environ.get("RUNCORE_CONFIG")
    if env:
        return env
    if os.path.exists(DEFAULT_CONFIG_FILE):
        return DEFAULT_CONFIG_FILE
    return DEFAULT_CONFIG


def _instance(args: argparse.Namespace) -> Instance:
    from runcore.instance import Instance

    return Instance.from_config(config_source(args.config))


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = end - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


# --- commands -----------------------------------------------------------------------------------


def cmd_job_list(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.definitions import load_code_location

    defs = load_code_location(args.location)
    for name in defs.job_names:
        job = defs.get_job(name)
        out.write(f"{name}\t{len(job.ops)} ops\t{job.description or ''}\n")
    return 0


def cmd_job_execute(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.definitions import load_code_location
    from runcore.errors import RunTimeoutError
    from runcore.runs import RunStatus

    tags = _parse_tags(args.tag)
    location = absolute_location(args.location)
    job = load_code_location(location).get_job(args.job)
    with _instance(args) as inst:
        run = inst.submit_run(job, tags=tags, code_location=location)
        out.write(f"run {run.run_id} of {job.name} submitted\n")
        if run.status is RunStatus.QUEUED:
            from runcore.daemon import daemon_statuses

            if not any(s.alive for s in daemon_statuses(inst.storage)):
                out.write(
                    "the run is queued and no daemon is alive to start it: run `runcore daemon` "
                    "(or pass --timeout to stop waiting)\n"
                )
            out.flush()
        try:
            done = inst.wait_for_run(run.run_id, timeout=args.timeout)
        except RunTimeoutError:
            inst.cancel_run(run.run_id)
            raise
    out.write(
        f"run {done.run_id} {done.status.value} in {_duration(done.started_at, done.ended_at)}\n"
    )
    if done.failure_reason:
        out.write(f"reason: {done.failure_reason}\n")
    return 0 if done.status.value == "SUCCESS" else 1


def cmd_runs_list(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.runs import RunsFilter, RunStatus

    try:
        statuses = [RunStatus(s.upper()) for s in args.status] if args.status else None
    except ValueError as exc:
        names = ", ".join(s.value for s in RunStatus)
        raise UsageError(f"{exc}; statuses are: {names}") from None
    filters = RunsFilter(job_name=args.job, statuses=statuses, tags=_parse_tags(args.tag) or None)
    with _instance(args) as inst:
        runs = inst.get_runs(filters, limit=args.limit)
    if args.json:
        from runcore import _serde

        out.write(json.dumps([_serde.to_jsonable(r) for r in runs], indent=2) + "\n")
        return 0
    if not runs:
        out.write("no runs\n")
        return 0
    out.write(f"{'RUN ID':36}  {'JOB':20}  {'STATUS':10}  {'CREATED':19}  {'TOOK':>7}  TAGS\n")
    for run in runs:
        tags = ",".join(f"{k}={v}" for k, v in sorted(run.tags.items()))
        if run.corrupt is not None:  # shown, never hidden; `runs show` says what is wrong
            tags = "CORRUPT (see runs show)"
        status = run.status.value + ("!" if run.corrupt is not None else "")
        out.write(
            f"{run.run_id:36}  {run.job_name[:20]:20}  {status:10}  "
            f"{_fmt_time(run.created_at):19}  {_duration(run.started_at, run.ended_at):>7}  "
            f"{tags}\n"
        )
    return 0


def cmd_runs_show(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        run = inst.get_run(args.run_id)
        events = inst.get_events(args.run_id)
    if args.json:
        from runcore import _serde

        out.write(
            json.dumps(
                {"run": _serde.to_jsonable(run), "events": [_serde.to_jsonable(e) for e in events]},
                indent=2,
            )
            + "\n"
        )
        return 0
    out.write(f"run {run.run_id}  job {run.job_name}  {run.status.value}\n")
    if run.corrupt is not None:
        out.write(
            f"CORRUPT: {run.corrupt}. runcore's duties skip this run and never change it; "
            "delete or repair its row\n"
        )
    if run.failure_reason:
        out.write(f"reason: {run.failure_reason}\n")
    for event in events:
        import datetime

        when = datetime.datetime.fromtimestamp(event.timestamp).strftime("%H:%M:%S.%f")[:-3]
        step = event.step_key or "-"
        detail = event.message
        if event.data:
            detail += " " + " ".join(f"{k}={v}" for k, v in event.data.items())
        out.write(f"{when}  {event.event_type.value:18}  {step:20}  {detail.strip()}\n")
    return 0


def cmd_runs_cancel(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        if not inst.cancel_run(args.run_id):
            out.write(
                f"run {args.run_id} had already ended {inst.get_run(args.run_id).status.value}\n"
            )
            return 1
        out.write(f"run {args.run_id}: {inst.get_run(args.run_id).status.value}\n")
    return 0


def cmd_runs_why(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        out.write(str(inst.explain_queued(args.run_id)) + "\n")
    return 0


def cmd_instance_migrate(args: argparse.Namespace, out: TextIO) -> int:
    inst = _instance(args)
    try:
        versions = inst.migrate()
    finally:
        inst.close()
    if versions is None:
        out.write("this storage has no schema to migrate\n")
    elif versions[0] == versions[1]:
        out.write(f"the storage is at schema version {versions[1]} already; nothing to do\n")
    else:
        out.write(f"migrated the storage from schema version {versions[0]} to {versions[1]}\n")
    return 0


def cmd_concurrency_set(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        inst.set_pool_limit(args.pool, args.limit)
    out.write(f"pool {args.pool}: limit {args.limit}\n")
    return 0


def cmd_concurrency_get(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        limit = inst.get_pool_limit(args.pool)
        held = inst.storage.get_pool_leases(args.pool)
        default = inst.config.concurrency.pools.default_limit if inst.config else None
    shown = (
        f"limit {limit}"
        if limit is not None
        else (
            f"no limit set (default_limit {default} applies)" if default is not None else "no limit"
        )
    )
    out.write(f"pool {args.pool}: {shown}; {len(held)} slots held\n")
    for lease in held:
        who = lease.run_id + (f"/{lease.step_key}" if lease.step_key else "")
        out.write(f"  {who}\n")
    return 0


def cmd_concurrency_list(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        limits = inst.storage.get_pool_limits()
        leases = inst.storage.get_pool_leases()
    held: dict[str, int] = {}
    for lease in leases:
        held[lease.pool] = held.get(lease.pool, 0) + 1
    names = sorted(set(limits) | set(held))
    if not names:
        out.write("no pools\n")
        return 0
    out.write(f"{'POOL':24}  {'LIMIT':>5}  {'HELD':>5}\n")
    for name in names:
        limit = str(limits[name]) if name in limits else "-"
        out.write(f"{name:24}  {limit:>5}  {held.get(name, 0):>5}\n")
    return 0


def cmd_concurrency_delete(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args) as inst:
        inst.delete_pool_limit(args.pool)
    out.write(f"pool {args.pool}: limit removed\n")
    return 0


def cmd_daemon_run(args: argparse.Namespace, out: TextIO) -> int:
    import signal
    import time

    from runcore import _validate
    from runcore.daemon import Daemon

    interval = _validate.interval("--interval", args.interval)
    # The handler only appends: setting a threading.Event from a signal handler can deadlock
    # (the main thread may hold the Event's lock when the signal lands).
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    with _instance(args) as inst:
        daemon = Daemon(inst, dequeue_interval=interval)
        out.write(f"runcore daemon {daemon.daemon_id} started (stop with Ctrl-C or SIGTERM)\n")
        out.flush()
        with daemon:  # leaving it re-raises a StorageError that stopped the duties: exit 2
            while not stop and not daemon.stopped_by_error:
                time.sleep(0.1)
        out.write("runcore daemon stopped\n")
    return 0


def cmd_daemon_status(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.daemon import daemon_statuses

    with _instance(args) as inst:
        statuses = daemon_statuses(inst.storage)
    if not statuses:
        out.write("no daemon has ever run against this instance\n")
        return 1
    for status in statuses:
        beat = status.heartbeat
        state = (
            "alive" if status.alive else ("stopped" if beat.info.get("stopped") else "not alive")
        )
        out.write(
            f"{beat.daemon_id}: {state}, last heartbeat {status.age_seconds:.1f}s ago "
            f"(pid {beat.info.get('pid')} on {beat.info.get('host')})\n"
        )
        if beat.info.get("last_error"):
            out.write(f"  last error: {beat.info['last_error']}\n")
    return 0 if any(s.alive for s in statuses) else 1


def cmd_worker_execute(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.worker import run_execute_command

    return run_execute_command(args.run_id, args.instance, sys.stderr, attempt_id=args.attempt)


def cmd_worker_warm(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.worker import run_warm_command

    return run_warm_command(
        args.instance, args.preload or (), out, sys.stderr, ready_fd=args.ready_fd
    )


def cmd_code_server(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from runcore.codeserver.server import serve
    except ImportError as exc:
        raise UsageError(
            f"the code server cannot start: {exc}; reinstall runcore's dependencies "
            "(grpcio>=1.72.2, protobuf>=6.30)"
        ) from exc

    max_workers = args.max_workers
    if max_workers is None:
        env = os.environ.get("RUNCORE_GRPC_MAX_WORKERS")
        try:
            max_workers = int(env) if env else (os.cpu_count() or 1) * 5
        except ValueError:
            raise UsageError(f"RUNCORE_GRPC_MAX_WORKERS must be an integer, got {env!r}") from None
    if max_workers < 1:
        raise UsageError(f"--max-workers must be >= 1, got {max_workers}")
    config_token = None
    instance = args.instance
    if not instance:
        # The config the server passes on leaves secrets out: take its launcher token here.
        inst = _instance(args)
        instance = json.dumps(inst.config_for_workers())
        if inst.config is not None:
            from runcore.codeserver.tokens import config_token as find_config_token

            config_token = find_config_token(inst.config, f"{args.host}:{args.port}")
    return serve(
        absolute_location(args.location),
        host=args.host,
        port=args.port,
        max_workers=max_workers,
        instance=instance,
        run_mode=args.run_mode,
        token=args.token,  # None: $RUNCORE_CODE_SERVER_TOKEN, the config's, or a generated one
        config_token=config_token,
        log_interval=args.log_interval,
        out=out,
    )


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.demo import run_demo

    return run_demo(db_path=args.db, out=out, live=not args.plain)


# --- wiring -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runcore", description="Run and inspect data-pipeline jobs with runcore."
    )
    parser.add_argument(
        "--config",
        help="instance config YAML (default: $RUNCORE_CONFIG, ./runcore.yaml, "
        "else SQLite at .runcore/runs.db)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_job_commands(sub)
    _add_runs_commands(sub)
    _add_instance_commands(sub)
    _add_daemon_commands(sub)
    _add_worker_commands(sub)
    _add_code_server_command(sub)
    demo = sub.add_parser("demo", help="run the demo job on SQLite with a live view")
    demo.add_argument("--db", default=".runcore/runs.db", help="SQLite file (default: %(default)s)")
    demo.add_argument("--plain", action="store_true", help="print events as lines, no redraw")
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_job_commands(sub: Any) -> None:
    job = sub.add_parser("job", help="list and execute jobs of a code location")
    job_sub = job.add_subparsers(dest="job_command", required=True)
    job_list = job_sub.add_parser("list", help="list the jobs of a code location")
    job_list.add_argument("location", help="'pkg.module:defs' or 'path/file.py:defs'")
    job_list.set_defaults(func=cmd_job_list)
    job_exec = job_sub.add_parser("execute", help="run a job and wait for it")
    job_exec.add_argument("location", help="'pkg.module:defs' or 'path/file.py:defs'")
    job_exec.add_argument("job", help="the job's name")
    job_exec.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a run tag")
    job_exec.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait; the run is canceled after"
    )
    job_exec.set_defaults(func=cmd_job_execute)


def _add_runs_commands(sub: Any) -> None:
    runs = sub.add_parser("runs", help="inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list", help="list runs, newest first")
    runs_list.add_argument("--job", help="only runs of this job")
    runs_list.add_argument("--status", action="append", help="only runs in this status")
    runs_list.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only with tag")
    runs_list.add_argument("--limit", type=int, default=20, help="at most N runs (default 20)")
    runs_list.add_argument("--json", action="store_true", help="print JSON")
    runs_list.set_defaults(func=cmd_runs_list)
    runs_show = runs_sub.add_parser("show", help="a run and its events")
    runs_show.add_argument("run_id")
    runs_show.add_argument("--json", action="store_true", help="print JSON")
    runs_show.set_defaults(func=cmd_runs_show)

    runs_cancel = runs_sub.add_parser("cancel", help="cancel a run, wherever it is")
    runs_cancel.add_argument("run_id")
    runs_cancel.set_defaults(func=cmd_runs_cancel)
    runs_why = runs_sub.add_parser("why", help="why a queued run has not started")
    runs_why.add_argument("run_id")
    runs_why.set_defaults(func=cmd_runs_why)


def _add_instance_commands(sub: Any) -> None:
    instance = sub.add_parser("instance", help="instance settings")
    instance_sub = instance.add_subparsers(dest="instance_command", required=True)
    concurrency = instance_sub.add_parser("concurrency", help="pool limits")
    conc_sub = concurrency.add_subparsers(dest="concurrency_command", required=True)
    conc_set = conc_sub.add_parser("set", help="set a pool's limit")
    conc_set.add_argument("pool")
    conc_set.add_argument("limit", type=int)
    conc_set.set_defaults(func=cmd_concurrency_set)
    conc_get = conc_sub.add_parser("get", help="a pool's limit and holders")
    conc_get.add_argument("pool")
    conc_get.set_defaults(func=cmd_concurrency_get)
    conc_list = conc_sub.add_parser("list", help="every pool with a limit or a held slot")
    conc_list.set_defaults(func=cmd_concurrency_list)
    conc_del = conc_sub.add_parser("delete", help="remove a pool's limit")
    conc_del.add_argument("pool")
    conc_del.set_defaults(func=cmd_concurrency_delete)
    migrate = instance_sub.add_parser("migrate", help="upgrade the storage's schema in place")
    migrate.set_defaults(func=cmd_instance_migrate)


def _add_daemon_commands(sub: Any) -> None:
    daemon = sub.add_parser("daemon", help="run the daemon, or say whether one is alive")
    daemon.add_argument("--interval", type=float, default=0.5, help="seconds between passes")
    daemon.set_defaults(func=cmd_daemon_run)
    daemon_sub = daemon.add_subparsers(dest="daemon_command")
    daemon_status = daemon_sub.add_parser("status", help="whether a daemon is alive")
    daemon_status.set_defaults(func=cmd_daemon_status)


def _add_code_server_command(sub: Any) -> None:
    server = sub.add_parser(
        "code-server", help="serve a code location over gRPC and run non-isolated runs"
    )
    server.add_argument("--location", required=True, help="'pkg.module:defs' or 'file.py:defs'")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    server.add_argument("--port", type=int, default=4266, help="port (0: any free port)")
    server.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="runs executing at once (default: $RUNCORE_GRPC_MAX_WORKERS or cpu count x 5)",
    )
    server.add_argument(
        "--instance", help="instance config as JSON or a file (default: --config's instance)"
    )
    server.add_argument(
        "--run-mode",
        choices=["thread", "process"],
        default="thread",
        help="execute runs as threads of the server, or as its child processes",
    )
    server.add_argument(
        "--token",
        help="shared secret every call but Ping must carry (default: "
        "$RUNCORE_CODE_SERVER_TOKEN, the config's CodeServerRunLauncher token, else one is "
        "generated into $RUNCORE_HOME/code-servers/HOST_PORT.token, mode 0600)",
    )
    server.add_argument(
        "--log-interval", type=float, default=10.0, help="seconds between utilization log lines"
    )
    server.set_defaults(func=cmd_code_server)


def _add_worker_commands(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run worker commands (used by launchers)")
    worker_sub = worker.add_subparsers(dest="worker_command", required=True)
    execute = worker_sub.add_parser("execute-run", help="execute one stored run, then exit")
    execute.add_argument("run_id")
    execute.add_argument("--instance", required=True, help="instance config: JSON or a file")
    execute.add_argument(
        "--attempt", help="the launch attempt to start (the launcher's; default: the current)"
    )
    execute.set_defaults(func=cmd_worker_execute)
    warm = worker_sub.add_parser("warm", help="get ready, then execute the run read from stdin")
    warm.add_argument("--instance", required=True, help="instance config: JSON or a file")
    warm.add_argument("--preload", action="append", help="a code location to import ahead")
    warm.add_argument(
        "--ready-fd", type=int, default=None, help="a file descriptor to write 'ready' to"
    )
    warm.set_defaults(func=cmd_worker_warm)


def check_argv(argv: Sequence[str]) -> None:
    """Refuse command-line arguments that are not valid UTF-8 (Python carries undecodable
    bytes as lone surrogates): :class:`~runcore.errors.ConfigError` naming the argument."""
    from runcore import _validate

    previous = ""
    for index, arg in enumerate(argv, start=1):
        field = f"command-line argument {index}"
        flag = arg.partition("=")[0]
        if arg.startswith("-") and flag.isascii():
            field += f" ({flag})"
        elif previous.startswith("-") and previous.isascii():
            field += f" (the value of {previous})"
        _validate.text(arg, field)
        previous = arg


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_argv(argv)
    except RuncoreError as exc:
        sys.stderr.write(f"runcore: error: {type(exc).__name__}: {exc}\n")
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out or sys.stdout
    # Like `python -m`, let code locations name modules in the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        code: int = args.func(args, stream)
    except RuncoreError as exc:
        sys.stderr.write(f"runcore: error: {type(exc).__name__}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("runcore: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
