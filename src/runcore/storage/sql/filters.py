"""``RunsFilter`` as SQL: the ``FROM ... WHERE ... ORDER BY`` of a run listing."""

from __future__ import annotations

from typing import Any

from runcore import _validate
from runcore.runs import RunsFilter

#: A condition that holds for no row, in every dialect (SQLite's bare ``0`` is not PostgreSQL's).
NEVER = "1 = 0"


def marks(n: int) -> str:
    """``n`` placeholders, comma-separated."""
    return ",".join("?" * n)


def driving_tag(filters: RunsFilter | None) -> tuple[str, str] | None:
    """The tag to walk the runs by, newest first, instead of walking all runs.

    Only for filters on tags (and creation time) alone. There the ``run_tags`` primary key
    (key, value, run_pk) read backwards yields exactly the runs with that tag, in storage order,
    so a listing of a backfill's runs costs what the backfill holds, not what the database
    holds. With a status, job or id filter the run indexes drive instead (a tag such as
    ``team`` may be on most runs, while few are QUEUED).
    """
    if filters is None or not filters.tags:
        return None
    if (
        filters.run_ids is not None
        or filters.job_name is not None
        or filters.statuses is not None
        or filters.parent_run_id is not None
        or filters.root_run_id is not None
    ):
        return None
    for key, want in filters.tags.items():
        if isinstance(want, str):
            return key, want
        values = list(want)
        if len(values) == 1:
            return key, values[0]
    return None


def where(filters: RunsFilter | None, skip_tag: str | None = None) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``runs`` for ``filters`` (except the tag ``skip_tag``), and params."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters is None:
        return clauses, params

    def one_of(column: str, values: list[Any]) -> None:
        if not values:
            clauses.append(NEVER)
        elif len(values) == 1:
            clauses.append(f"runs.{column} = ?")
            params.append(values[0])
        else:
            clauses.append(f"runs.{column} IN ({marks(len(values))})")
            params.extend(values)

    if filters.run_ids is not None:
        one_of("run_id", list(filters.run_ids))
    if filters.job_name is not None:
        one_of("job_name", [filters.job_name])
    if filters.statuses is not None:
        one_of("status", [s.value for s in filters.statuses])
    if filters.created_after is not None:
        clauses.append("runs.created_at > ?")
        params.append(filters.created_after)
    if filters.created_before is not None:
        clauses.append("runs.created_at < ?")
        params.append(filters.created_before)
    if filters.updated_after is not None:
        clauses.append("COALESCE(runs.updated_at, runs.created_at) > ?")
        params.append(filters.updated_after)
    if filters.parent_run_id is not None:
        one_of("parent_run_id", [filters.parent_run_id])
    if filters.root_run_id is not None:
        one_of("root_run_id", [filters.root_run_id])
    for key, want in (filters.tags or {}).items():
        if key == skip_tag:
            continue
        values = [want] if isinstance(want, str) else list(want)
        if not values:
            clauses.append(NEVER)
            continue
        # A tag test per run, through the (key, value, run_pk) primary key: cheap while
        # walking runs newest first, which is what a LIMITed listing does.
        test = "t.value = ?" if len(values) == 1 else f"t.value IN ({marks(len(values))})"
        clauses.append(
            f"EXISTS (SELECT 1 FROM run_tags t WHERE t.key = ? AND {test} AND t.run_pk = runs.id)"
        )
        params.append(key)
        params.extend(values)
    return clauses, params


def from_where(
    filters: RunsFilter | None, after_storage_id: int | None, ascending: bool
) -> tuple[str, str, list[Any]]:
    """``FROM ... WHERE ...`` for ``filters``, the column runs are ordered by, and params."""
    driving = driving_tag(filters)
    clauses, params = where(filters, driving[0] if driving else None)
    if driving is None:
        source, order = "runs", "runs.id"
    else:
        # CROSS JOIN keeps run_tags as the outer loop, read in primary-key order.
        source, order = "run_tags d CROSS JOIN runs", "d.run_pk"
        clauses[:0] = ["d.key = ?", "d.value = ?", "runs.id = d.run_pk"]
        params[:0] = list(driving)
    if after_storage_id is not None:
        clauses.append(f"{order} > ?" if ascending else f"{order} < ?")
        params.append(after_storage_id)
    condition = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return f" FROM {source}{condition}", order, params


def select(
    columns: str,
    filters: RunsFilter | None,
    limit: int | None,
    ascending: bool,
    after_storage_id: int | None,
) -> tuple[str, list[Any]]:
    """The listing query of ``columns`` of the runs ``filters`` selects, and its params."""
    source, order, params = from_where(filters, after_storage_id, ascending)
    sql = f"SELECT {columns}{source} ORDER BY {order} {'ASC' if ascending else 'DESC'}"
    if limit is not None:
        sql += limit_clause(limit)
    return sql, params


def limit_clause(limit: int) -> str:
    """`` LIMIT n``, with ``n`` written into the text, not bound: with the page size known,
    PostgreSQL costs a generic plan like the custom ones, so a prepared query is planned once,
    not on every call (a bound LIMIT kept a listing re-planning, ~0.3 ms a query)."""
    return f" LIMIT {_validate.integer('limit', limit, minimum=0):d}"
