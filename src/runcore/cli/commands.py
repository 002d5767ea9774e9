"""The ``runcore`` commands, one function each: ``cmd_<group>_<name>(args, out) -> exit code``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TextIO

from runcore import _serde, _validate
from runcore.cli.common import (
    UsageError,
    _instance,
    _json,
    _parse_tags,
    resolve_run_id,
)
from runcore.definitions import absolute_location, load_code_location
from runcore.runs import RunsFilter, RunStatus


def cmd_job_list(args: argparse.Namespace, out: TextIO) -> int:

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
    from runcore.daemon import daemon_statuses

    tags = _parse_tags(args.tag)
    location = absolute_location(args.location)
    job = load_code_location(location).get_job(args.job)
    inst = _instance(args)
    inst.ensure_started()
    run = inst.submit_run(job, tags=tags, code_location=location)
    out.write(f"run {run.run_id} of {job.name} submitted\n")
    if run.status is RunStatus.QUEUED and not any(s.alive for s in daemon_statuses(inst.storage)):
        out.write(
            "the run is queued and no daemon is alive to start it: run `runcore daemon` "
            "(or pass --timeout to stop waiting)\n"
        )
    out.flush()
    return follow_run(inst, run, job, out, plain=args.plain, timeout=args.timeout)


def cmd_runs_list(args: argparse.Namespace, out: TextIO) -> int:

    try:
        statuses = [RunStatus(s.upper()) for s in args.status] if args.status else None
    except ValueError as exc:
        names = ", ".join(s.value for s in RunStatus)
        raise UsageError(f"--status: {exc}; statuses are: {names}") from None
    filters = RunsFilter(job_name=args.job, statuses=statuses, tags=_parse_tags(args.tag) or None)
    with _instance(args, read_only=True) as inst:
        runs = inst.get_runs(filters, limit=args.limit)
    if args.json:
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

    from runcore import _terminal

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

    return run_execute_command(
        args.run_id,
        args.instance,
        sys.stderr,
        attempt_id=args.attempt,
        code_location=args.code_location,
    )


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
