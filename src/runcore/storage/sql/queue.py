"""The narrow reads admission makes: the queued runs' few fields, and the tags of the runs in
progress. The database extracts the fields and packs every row into one JSON document, which
Python parses in one call: several times faster than parsing each run's JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from runcore import _serde
from runcore.runs import IN_PROGRESS_STATUSES
from runcore.storage.base import QueuedRunRow
from runcore.storage.rows import queued_row_ok
from runcore.storage.sql.dialect import Dialect, SqlConnection, tags_of
from runcore.storage.sql.filters import marks

Read = Callable[[str, Sequence[Any]], list[Any]]

_IN_PROGRESS = tuple(sorted(status.value for status in IN_PROGRESS_STATUSES))
_IN_PROGRESS_SQL = "(" + ", ".join(f"'{status}'" for status in _IN_PROGRESS) + ")"


def _rows(text: str | None) -> Any:
    """The packed rows, parsed by orjson where it can (ids are far below 2**63, so its
    reading of big integers as floats changes nothing: a row holding one is refused by
    :func:`queued_row_ok` either way), else by the standard library."""
    if not text:
        return []
    rows = _serde._fast_json(text)
    return json.loads(text) if rows is None else rows


def queued_run_rows(d: Dialect, read: Read, run_ids: Sequence[str] | None) -> list[QueuedRunRow]:
    """:meth:`~runcore.storage.base.QueueReader.get_queued_run_rows`; a row whose JSON does not
    parse is left out (a corrupt run is skipped by the duties)."""
    inner = f"SELECT id, run_id, body FROM runs WHERE status = 'QUEUED' AND {d.json_valid('body')}"
    params: list[Any] = []
    if run_ids is not None:
        if not run_ids:
            return []
        inner += f" AND run_id IN ({marks(len(run_ids))})"
        params.extend(run_ids)
    fields = [d.json_field("body", [name]) for name in ("tags", "pools", "root_pools")]
    (text,) = read(d.json_rows(["id", "run_id", *fields], inner, "id"), params)[0]
    return [
        # storage_id, run_id, tags, pools, root_pools: by position (a first pass makes 10,000)
        QueuedRunRow(row[0], row[1], row[2] or {}, row[3] or [], row[4])
        for row in _rows(text)
        if queued_row_ok(row)
    ]


def _tags_column(d: Dialect) -> str:
    return f"CASE WHEN {d.json_valid('body')} THEN {d.json_field('body', ['tags'])} END"


def in_progress_tags(d: Dialect, read: Read) -> list[tuple[str, dict[str, str]]]:
    """The id and tags of every run in progress, in one JSON document."""
    inner = (
        f"SELECT id, run_id, {_tags_column(d)} AS tags FROM runs WHERE status IN {_IN_PROGRESS_SQL}"
    )
    (text,) = read(d.json_rows(["run_id", "tags"], inner, "id"), ())[0]
    return [(row[0], tags_of(row[1])) for row in _rows(text)]


def in_progress_tags_in(d: Dialect, conn: SqlConnection) -> list[dict[str, str]]:
    """The tags of every run in progress, read inside a write transaction (an admission's)."""
    rows = conn.execute(
        f"SELECT {_tags_column(d)} FROM runs WHERE status IN ({marks(len(_IN_PROGRESS))})",
        _IN_PROGRESS,
    ).fetchall()
    return [tags_of(row[0]) for row in rows]
