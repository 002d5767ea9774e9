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
import logging
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


class MissingDatabaseError(UsageError):
    """A read-only command pointed at a SQLite file that does not exist."""


class AmbiguousRunIdError(UsageError):
    """A run id prefix that matches more than one run."""


def _instance(args: argparse.Namespace, *, read_only: bool = False) -> Instance:
    """The command's instance. ``read_only`` commands never create a database: a SQLite file
    that does not exist is an error naming it (a typo must not look like an empty instance)."""
    from runcore.instance import Instance

    source = config_source(args.config)
    inst = Instance.from_config(source)
    if read_only:
        path = getattr(inst.storage, "path", None)
        if isinstance(path, str) and not os.path.exists(path):
            where = (
                f"config {source!r}"
                if isinstance(source, str)
                else "the default config (no --config, no $RUNCORE_CONFIG, no ./runcore.yaml)"
            )
            raise MissingDatabaseError(
                f"no runcore database at {os.path.abspath(path)} (the storage of {where}); "
                "this command only reads, so it does not create one. Run it from the directory "
                "that holds .runcore/, or give --config (or $RUNCORE_CONFIG) naming the "
                "instance; a new instance's database is created by the first command that "
                "writes, e.g. `runcore job execute LOCATION JOB`"
            )
    return inst


_PREFIX_CHARS = frozenset("0123456789abcdef-")
MIN_PREFIX = 4


def resolve_run_id(inst: Instance, text: str) -> str:
    """The run id ``text`` names: a whole run id, or a unique prefix of at least
    :data:`MIN_PREFIX` characters (like git's short ids)."""
    from runcore import _validate
    from runcore.errors import RunNotFoundError

    wanted = text.strip().lower()
    if _validate.is_run_id(wanted):
        return wanted
    if len(wanted) < MIN_PREFIX or not set(wanted) <= _PREFIX_CHARS:
        raise UsageError(
            f"RUN_ID: {text!r} is not a run id or a prefix of one; give the id, or at least "
            f"{MIN_PREFIX} of its first characters as `runcore runs list` shows them"
        )
    inst.ensure_started()
    matches = [run_id for run_id in inst.storage.get_run_ids() if run_id.startswith(wanted)]
    if not matches:
        raise RunNotFoundError(wanted)
    if len(matches) > 1:
        lines = []
        for run_id in sorted(matches)[:20]:
            run = inst.storage.get_run(run_id)
            lines.append(
                f"  {run_id}  {run.job_name if run else '?'}  {run.status.value if run else '?'}"
            )
        more = f"\n  ... and {len(matches) - 20} more" if len(matches) > 20 else ""
        raise AmbiguousRunIdError(
            f"RUN_ID: the prefix {wanted!r} matches {len(matches)} runs; give more characters:\n"
            + "\n".join(lines)
            + more
        )
    return matches[0]


def _json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = end - start
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


# --- number flags -------------------------------------------------------------------------------


def _int_flag(minimum: int, maximum: int | None = None) -> Any:
    """An argparse ``type`` for an integer flag in ``[minimum, maximum]``: a bad value exits 2
    with ``argument --flag: ...``."""
    from runcore import _validate

    def parse(text: str) -> int:
        try:
            return _validate.int_text("value", text, minimum=minimum, maximum=maximum)
        except RuncoreError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None

    parse.__name__ = "integer"
    return parse


def _seconds_or_off_flag(text: str) -> float:
    """An argparse ``type`` for a number of seconds where 0 means "off": finite and >= 0."""
    from runcore import _validate

    try:
        value = _validate.float_text("value", text, above=None)
        return _validate.number("value", value, minimum=0)
    except RuncoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None


def _seconds_flag(text: str) -> float:
    """An argparse ``type`` for a number of seconds: finite and > 0."""
    from runcore import _validate

    try:
        return _validate.float_text("value", text, above=0)
    except RuncoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None


# --- commands -----------------------------------------------------------------------------------


def cmd_job_list(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.definitions import load_code_location

    defs = load_code_location(args.location)
    if args.json:
        _json(
            out,
            [
                {
                    "name": name,
                    "ops": list(defs.get_job(name).ops),
                    "description": defs.get_job(name).description,
                }
                for name in defs.job_names
            ],
        )
        return 0
    for name in defs.job_names:
        job = defs.get_job(name)
        out.write(f"{name}\t{len(job.ops)} ops\t{job.description or ''}\n")
    return 0


def cmd_job_execute(args: argparse.Namespace, out: TextIO) -> int:
    from runcore._follow import follow_run
    from runcore.definitions import load_code_location
    from runcore.runs import RunStatus

    tags = _parse_tags(args.tag)
    location = absolute_location(args.location)
    job = load_code_location(location).get_job(args.job)
    inst = _instance(args)
    inst.ensure_started()
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
    return follow_run(inst, run, job, out, plain=args.plain, timeout=args.timeout)


def cmd_runs_list(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.runs import RunsFilter, RunStatus

    try:
        statuses = [RunStatus(s.upper()) for s in args.status] if args.status else None
    except ValueError as exc:
        names = ", ".join(s.value for s in RunStatus)
        raise UsageError(f"--status: {exc}; statuses are: {names}") from None
    filters = RunsFilter(job_name=args.job, statuses=statuses, tags=_parse_tags(args.tag) or None)
    with _instance(args, read_only=True) as inst:
        runs = inst.get_runs(filters, limit=args.limit)
    if args.json:
        from runcore import _serde

        _json(out, [_serde.to_jsonable(r) for r in runs])
        return 0
    if not runs:
        out.write("no runs\n")
        return 0
    from runcore import _terminal

    con = _terminal.console(out)
    con.print(_terminal.runs_table(runs, all_tags=args.all_tags))
    corrupt = [r.run_id for r in runs if getattr(r, "corrupt", None)]
    if corrupt:
        out.write(
            f"CORRUPT: {len(corrupt)} stored run(s) could not be read back "
            f"(`runcore runs show RUN` says why): {', '.join(corrupt)}\n"
        )
    return 0


def cmd_runs_show(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args, read_only=True) as inst:
        run_id = resolve_run_id(inst, args.run_id)
        run = inst.get_run(run_id)
        events = inst.get_events(run_id)
    if args.json:
        from runcore import _serde

        _json(
            out,
            {"run": _serde.to_jsonable(run), "events": [_serde.to_jsonable(e) for e in events]},
        )
        return 0
    from runcore import _terminal

    out.write(f"run {run.run_id}  job {run.job_name}  {run.status.value}\n")
    if run.corrupt is not None:
        out.write(
            f"CORRUPT: {run.corrupt}. runcore's duties skip this run and never change it; "
            "delete or repair its row\n"
        )
    out.write(
        f"created {_terminal.when(run.created_at)}  started {_terminal.when(run.started_at)}  "
        f"took {_terminal.duration(run.started_at, run.ended_at)}\n"
    )
    tags = _terminal.shown_tags(run.tags, all_tags=args.all_tags)
    if tags:
        out.write(f"tags: {tags}\n")
    if run.failure_reason:
        out.write(f"reason: {run.failure_reason}\n")
    for event in events:
        out.write(_terminal.event_line(event) + "\n")
    return 0


def cmd_runs_logs(args: argparse.Namespace, out: TextIO) -> int:
    import time

    from runcore import _serde, _terminal

    with _instance(args, read_only=True) as inst:
        run_id = resolve_run_id(inst, args.run_id)
        inst.get_run(run_id)
        cursor: int | None = None
        while True:
            ended = inst.get_run(run_id).status.is_terminal  # read before the events
            records = inst.storage.get_event_records(run_id, after_storage_id=cursor)
            for record in records:
                cursor = record.storage_id
                if args.json:
                    line = json.dumps(
                        {"storage_id": record.storage_id, **_serde.to_jsonable(record.event)}
                    )
                else:
                    line = _terminal.event_line(record.event)
                out.write(line + "\n")
            out.flush()
            if not args.follow or (ended and not records):
                return 0
            if not records:
                time.sleep(0.2)


def cmd_runs_cancel(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args, read_only=True) as inst:
        run_id = resolve_run_id(inst, args.run_id)
        if not inst.cancel_run(run_id):
            out.write(f"run {run_id} had already ended {inst.get_run(run_id).status.value}\n")
            return 1
        out.write(f"run {run_id}: {inst.get_run(run_id).status.value}\n")
    return 0


def cmd_runs_why(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args, read_only=True) as inst:
        answer = inst.explain_queued(resolve_run_id(inst, args.run_id))
    if args.json:
        _json(
            out,
            {
                "run_id": answer.run_id,
                "status": answer.status.value,
                "position": answer.position,
                "queue_length": answer.queue_length,
                "holds": [
                    {
                        "limit": h.limit,
                        "used": h.used,
                        "allowed": h.allowed,
                        "running": list(h.holders),
                        "queued_ahead": list(h.ahead),
                    }
                    for h in answer.holds
                ],
                "reasons": list(answer.reasons),
            },
        )
        return 0
    out.write(str(answer) + "\n")
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
    with _instance(args, read_only=True) as inst:
        limit = inst.get_pool_limit(args.pool)
        held = inst.storage.get_pool_leases(args.pool)
        default = inst.config.concurrency.pools.default_limit if inst.config else None
    holders = [lease.run_id + (f"/{lease.step_key}" if lease.step_key else "") for lease in held]
    if args.json:
        _json(
            out,
            {"pool": args.pool, "limit": limit, "default_limit": default, "held_by": holders},
        )
        return 0
    shown = (
        f"limit {limit}"
        if limit is not None
        else (
            f"no limit set (default_limit {default} applies)" if default is not None else "no limit"
        )
    )
    out.write(f"pool {args.pool}: {shown}; {len(held)} slots held\n")
    for who in holders:
        out.write(f"  {who}\n")
    return 0


def cmd_concurrency_list(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args, read_only=True) as inst:
        limits = inst.storage.get_pool_limits()
        leases = inst.storage.get_pool_leases()
    held: dict[str, int] = {}
    for lease in leases:
        held[lease.pool] = held.get(lease.pool, 0) + 1
    names = sorted(set(limits) | set(held))
    if args.json:
        _json(out, [{"pool": n, "limit": limits.get(n), "held": held.get(n, 0)} for n in names])
        return 0
    if not names:
        out.write("no pools\n")
        return 0
    from runcore import _terminal

    rows = [(n, str(limits[n]) if n in limits else "-", str(held.get(n, 0))) for n in names]
    _terminal.console(out).print(_terminal.simple_table(("POOL", "LIMIT", "HELD"), rows))
    return 0


def cmd_concurrency_delete(args: argparse.Namespace, out: TextIO) -> int:
    with _instance(args, read_only=True) as inst:
        if inst.get_pool_limit(args.pool) is None:
            known = sorted(inst.storage.get_pool_limits())
            raise UsageError(
                f"POOL: pool {args.pool!r} has no limit to delete (pools with a limit: "
                f"{', '.join(known) or 'none'}); `runcore instance concurrency list` shows them"
            )
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
    handler = _daemon_log_handler(out)
    runcore_log = logging.getLogger("runcore")
    runcore_log.addHandler(handler)
    old_level = runcore_log.level
    runcore_log.setLevel(logging.INFO)
    try:
        with _instance(args) as inst:
            daemon = Daemon(inst, dequeue_interval=interval)
            out.write(f"runcore daemon {daemon.daemon_id} started (stop with Ctrl-C or SIGTERM)\n")
            out.flush()
            with daemon:  # leaving it re-raises a StorageError that stopped the duties: exit 2
                while not stop and not daemon.stopped_by_error:
                    time.sleep(0.1)
            out.write("runcore daemon stopped\n")
    finally:
        runcore_log.removeHandler(handler)
        runcore_log.setLevel(old_level)
    return 0


def _daemon_log_handler(out: TextIO) -> logging.Handler:
    """One line per record on ``out``: time, level, logger, then the structured message."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    return handler


def cmd_daemon_status(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.daemon import daemon_statuses

    with _instance(args, read_only=True) as inst:
        statuses = daemon_statuses(inst.storage)
    if args.json:
        _json(
            out,
            [
                {
                    "daemon_id": s.heartbeat.daemon_id,
                    "alive": s.alive,
                    "age_seconds": round(s.age_seconds, 3),
                    "info": s.heartbeat.info,
                }
                for s in statuses
            ],
        )
        return 0 if any(s.alive for s in statuses) else 1
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
    from runcore.worker.process import run_execute_command

    return run_execute_command(args.run_id, args.instance, sys.stderr, attempt_id=args.attempt)


def cmd_worker_warm(args: argparse.Namespace, out: TextIO) -> int:
    from runcore.worker.process import run_warm_command

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


_RUN_ID_HELP = "a run id, or a unique prefix of one (at least 4 characters)"


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
    job_list.add_argument("--json", action="store_true", help="print JSON")
    job_list.set_defaults(func=cmd_job_list)
    job_exec = job_sub.add_parser(
        "execute", help="run a job and follow it live (Ctrl-C cancels, twice forces)"
    )
    job_exec.add_argument("location", help="'pkg.module:defs' or 'path/file.py:defs'")
    job_exec.add_argument("job", help="the job's name")
    job_exec.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a run tag")
    job_exec.add_argument(
        "--timeout",
        type=_seconds_flag,
        default=None,
        help="seconds to wait; the run is canceled after",
    )
    job_exec.add_argument(
        "--plain",
        action="store_true",
        help="one line per event, no live display (the default when not on a terminal)",
    )
    job_exec.set_defaults(func=cmd_job_execute)


def _add_runs_commands(sub: Any) -> None:
    runs = sub.add_parser("runs", help="inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list", help="list runs, newest first")
    runs_list.add_argument("--job", help="only runs of this job")
    runs_list.add_argument("--status", action="append", help="only runs in this status")
    runs_list.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only with tag")
    runs_list.add_argument(
        "--limit", type=_int_flag(1), default=20, help="at most N runs (default 20)"
    )
    runs_list.add_argument(
        "--all-tags", action="store_true", help="also show runcore's own runcore/ tags"
    )
    runs_list.add_argument("--json", action="store_true", help="print JSON")
    runs_list.set_defaults(func=cmd_runs_list)
    runs_show = runs_sub.add_parser("show", help="a run and its events")
    runs_show.add_argument("run_id", help=_RUN_ID_HELP)
    runs_show.add_argument(
        "--all-tags", action="store_true", help="also show runcore's own runcore/ tags"
    )
    runs_show.add_argument("--json", action="store_true", help="print JSON")
    runs_show.set_defaults(func=cmd_runs_show)
    runs_logs = runs_sub.add_parser(
        "logs", help="a run's events and captured stdout/stderr, optionally as they come"
    )
    runs_logs.add_argument("run_id", help=_RUN_ID_HELP)
    runs_logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the run ends"
    )
    runs_logs.add_argument("--json", action="store_true", help="print JSON, one event a line")
    runs_logs.set_defaults(func=cmd_runs_logs)

    runs_cancel = runs_sub.add_parser("cancel", help="cancel a run, wherever it is")
    runs_cancel.add_argument("run_id", help=_RUN_ID_HELP)
    runs_cancel.set_defaults(func=cmd_runs_cancel)
    runs_why = runs_sub.add_parser("why", help="why a queued run has not started")
    runs_why.add_argument("run_id", help=_RUN_ID_HELP)
    runs_why.add_argument("--json", action="store_true", help="print JSON")
    runs_why.set_defaults(func=cmd_runs_why)


def _add_instance_commands(sub: Any) -> None:
    instance = sub.add_parser("instance", help="instance settings")
    instance_sub = instance.add_subparsers(dest="instance_command", required=True)
    concurrency = instance_sub.add_parser("concurrency", help="pool limits")
    conc_sub = concurrency.add_subparsers(dest="concurrency_command", required=True)
    conc_set = conc_sub.add_parser("set", help="set a pool's limit")
    conc_set.add_argument("pool")
    conc_set.add_argument("limit", type=_int_flag(0), help="slots: an integer >= 0")
    conc_set.set_defaults(func=cmd_concurrency_set)
    conc_get = conc_sub.add_parser("get", help="a pool's limit and holders")
    conc_get.add_argument("pool")
    conc_get.add_argument("--json", action="store_true", help="print JSON")
    conc_get.set_defaults(func=cmd_concurrency_get)
    conc_list = conc_sub.add_parser("list", help="every pool with a limit or a held slot")
    conc_list.add_argument("--json", action="store_true", help="print JSON")
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
    daemon_status.add_argument("--json", action="store_true", help="print JSON")
    daemon_status.set_defaults(func=cmd_daemon_status)


def _add_code_server_command(sub: Any) -> None:
    server = sub.add_parser(
        "code-server", help="serve a code location over gRPC and run non-isolated runs"
    )
    server.add_argument("--location", required=True, help="'pkg.module:defs' or 'file.py:defs'")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    server.add_argument(
        "--port", type=_int_flag(0, 65535), default=4266, help="port (0: any free port)"
    )
    server.add_argument(
        "--max-workers",
        type=_int_flag(1),
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
        "--log-interval",
        type=_seconds_or_off_flag,
        default=10.0,
        help="seconds between utilization log lines",
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
        "--ready-fd",
        type=_int_flag(0),
        default=None,
        help="a file descriptor to write 'ready' to",
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
