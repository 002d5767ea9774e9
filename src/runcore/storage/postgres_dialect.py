"""PostgreSQL's dialect of the SQL core: its statements (``jsonb`` operators, ``BIGSERIAL``,
``FOR UPDATE``, advisory locks named within the current schema, the server's clock) and the
adapter that gives a psycopg connection the core's ``?``-placeholder interface. The connections
themselves, the pool and the retries are :class:`runcore.storage.postgres.PostgresStorage`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from runcore.storage.sql.dialect import Dialect, SqlConnection, format_placeholders

try:
    import psycopg
    import psycopg.errors
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "PostgreSQL storage needs psycopg 3 and psycopg-pool: pip install 'runcore[postgres]'"
    ) from exc

#: Parses ``body`` text as JSON, NULL where it does not parse (a corrupt run), so one bad row
#: never breaks a query over all runs. PostgreSQL 15 has no ``IS JSON``.
_JSON_FUNCTION = """
CREATE OR REPLACE FUNCTION runcore_json(t TEXT) RETURNS JSONB
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$
"""


def _path(path: Sequence[str]) -> str:
    """A text-array path literal: ``'{"tags","team"}'`` (runcore's constant keys only)."""
    return "'{" + ",".join(f'"{key}"' for key in path) + "}'"


class PostgresDialect(Dialect):
    """PostgreSQL's statements: ``jsonb`` operators, ``BIGSERIAL``, ``FOR UPDATE``, advisory
    locks named within the current schema, and the server's clock."""

    name = "postgres"
    noun = "a PostgreSQL schema"
    id_key = "BIGSERIAL PRIMARY KEY"
    real_type = "DOUBLE PRECISION"
    bigint_type = "BIGINT"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    integrity_errors = (psycopg.errors.UniqueViolation,)
    schema_preamble = (_JSON_FUNCTION.strip(),)
    event_uids = True

    def tables_sql(self) -> str:
        return "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"

    def has_column(self, conn: SqlConnection, table: str, column: str) -> bool:
        found = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? AND column_name = ?",
            (table, column),
        )
        return found.fetchone() is not None

    def json_valid(self, column: str) -> str:
        return f"runcore_json({column}) IS NOT NULL"

    def json_has(self, column: str, path: Sequence[str]) -> str:
        return f"runcore_json({column}) #> {_path(path)} IS NOT NULL"

    def json_field(self, column: str, path: Sequence[str]) -> str:
        return f"runcore_json({column}) #> {_path(path)}"

    def json_text(self, column: str, path: Sequence[str]) -> str:
        return f"runcore_json({column}) #>> {_path(path)}"

    def json_remove(self, column: str, paths: Sequence[Sequence[str]]) -> str:
        removed = "".join(f" #- {_path(path)}" for path in paths)
        return f"(runcore_json({column}){removed})::text"

    def json_rows(self, columns: Sequence[str], source: str, order_by: str) -> str:
        return (
            f"SELECT COALESCE(json_agg(json_build_array({', '.join(columns)}) "
            f"ORDER BY {order_by})::text, '[]') FROM ({source}) AS q"
        )

    def lock(self, conn: SqlConnection, name: str) -> None:
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ':' || ?, 0))",
            (name,),
        )

    def notify(self, conn: SqlConnection, kind: str) -> None:
        conn.execute("SELECT pg_notify('runcore_' || current_schema(), ?)", (kind,))

    def insert_id(self, conn: SqlConnection, sql: str, params: Sequence[Any]) -> int:
        row = conn.execute(sql + " RETURNING id", params).fetchone()
        return int(row[0]) if row is not None else 0

    def insert_ids(self, conn: SqlConnection, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        # One pipelined batch (psycopg's executemany): no round trip per row.
        assert isinstance(conn, PgConnection)
        cur = conn.raw.cursor()
        cur.executemany(format_placeholders(sql + " RETURNING id"), rows, returning=True)
        ids: list[int] = []
        while True:
            row = cur.fetchone()
            ids.append(int(row[0]) if row is not None else 0)
            if not cur.nextset():
                return ids

    def now(self, conn: SqlConnection) -> float:
        return float(
            conn.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()[0]
        )


DIALECT = PostgresDialect()


class PgConnection:
    """A psycopg connection speaking the core's ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.raw.execute(format_placeholders(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(format_placeholders(sql), [tuple(p) for p in parameters])
        return cur


__all__ = ["DIALECT", "PgConnection", "PostgresDialect"]
