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

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from runcore import _validate
from runcore.cli.common import UsageError, config_source, resolve_run_id
from runcore.cli.parser import build_parser
from runcore.errors import RuncoreError

__all__ = ["UsageError", "build_parser", "check_argv", "config_source", "main", "resolve_run_id"]


def check_argv(argv: Sequence[str]) -> None:
    """Refuse command-line arguments that are not valid UTF-8 (Python carries undecodable
    bytes as lone surrogates): :class:`~runcore.errors.ConfigError` naming the argument."""

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
