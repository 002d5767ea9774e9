"""What every ``runcore`` command shares: errors, the instance, run ids, flags."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from runcore import _validate
from runcore.errors import RuncoreError, RunNotFoundError

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

    from runcore.instance import Instance  # `runcore worker execute-run` needs no instance

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

    def parse(text: str) -> int:
        try:
            return _validate.int_text("value", text, minimum=minimum, maximum=maximum)
        except RuncoreError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None

    parse.__name__ = "integer"
    return parse


def _seconds_or_off_flag(text: str) -> float:
    """An argparse ``type`` for a number of seconds where 0 means "off": finite and >= 0."""

    try:
        value = _validate.float_text("value", text, above=None)
        return _validate.number("value", value, minimum=0)
    except RuncoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None


def _seconds_flag(text: str) -> float:
    """An argparse ``type`` for a number of seconds: finite and > 0."""

    try:
        return _validate.float_text("value", text, above=0)
    except RuncoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None


# --- commands -----------------------------------------------------------------------------------
