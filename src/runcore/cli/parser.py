"""The ``runcore`` argument parser (``docs/cli.md`` is checked against it)."""

from __future__ import annotations

import argparse
from typing import Any

from runcore.cli.commands import (
    cmd_code_server,
    cmd_concurrency_delete,
    cmd_concurrency_get,
    cmd_concurrency_list,
    cmd_concurrency_set,
    cmd_daemon_run,
    cmd_daemon_status,
    cmd_demo,
    cmd_instance_migrate,
    cmd_job_execute,
    cmd_job_list,
    cmd_runs_cancel,
    cmd_runs_list,
    cmd_runs_logs,
    cmd_runs_show,
    cmd_runs_why,
    cmd_worker_execute,
    cmd_worker_warm,
)
from runcore.cli.common import (
    _int_flag,
    _seconds_flag,
    _seconds_or_off_flag,
)

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
    execute.add_argument(
        "--code-location",
        help="load the job from this code location instead of the run's recorded one (a "
        "launcher whose workers see other paths, e.g. ECS's code_location_map)",
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
