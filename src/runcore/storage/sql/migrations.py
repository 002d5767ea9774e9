"""Creating, checking and upgrading the schema of an SQL storage, for every dialect.

A ``runcore_meta`` table holds ``app = runcore`` and the schema version. A database that is not
runcore's, or of a newer schema, is refused with a clear message and left untouched: nothing is
written before it is known to be ours. An older schema is upgraded one version per transaction
by the steps in :data:`MIGRATIONS`, each written once in dialect-neutral SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from runcore.errors import SchemaVersionError
from runcore.storage.sql.dialect import Dialect, SqlConnection
from runcore.storage.sql.schema import (
    APP_ID,
    EVENTS_BY_UID,
    SCHEMA_VERSION,
    WORKERS_TABLE,
    create_statements,
    render,
)

T = TypeVar("T")

#: Runs ``fn`` in one write transaction on ``conn`` (the storage's; see ``SqlStorage``).
Transaction = Callable[[SqlConnection, Callable[[SqlConnection], Any]], Any]


@attrs.frozen
class Place:
    """How messages name a database, and what a user does instead of using it."""

    where: str  # "'/data/runs.db'"
    noun: str  # "an SQLite database"
    retarget: str  # "point storage.sqlite.path at a new file"
    auto_migrate: str  # "storage.sqlite.auto_migrate"

    @property
    def retarget_sentence(self) -> str:
        """:attr:`retarget` as a sentence of its own."""
        return self.retarget[:1].upper() + self.retarget[1:]


#: The tags version 1 kept a run's worker in: user-writable, so never to be read again.
_V1_WORKER_TAGS = ("runcore/worker_pid", "runcore/worker_host", "runcore/worker_kind")


def _migrate_1_to_2(conn: SqlConnection, dialect: Dialect) -> None:
    """Add the ``workers`` table; delete the version-1 worker tags, copying nothing."""
    conn.execute(render(WORKERS_TABLE, dialect))
    marks = ",".join("?" * len(_V1_WORKER_TAGS))
    conn.execute(f"DELETE FROM run_tags WHERE key IN ({marks})", _V1_WORKER_TAGS)
    paths = [("tags", key) for key in _V1_WORKER_TAGS]
    found = " OR ".join(dialect.json_has("body", path) for path in paths)
    conn.execute(
        f"UPDATE runs SET body = {dialect.json_remove('body', paths)} "
        f"WHERE {dialect.json_valid('body')} AND ({found})"
    )


def _migrate_2_to_3(conn: SqlConnection, dialect: Dialect) -> None:
    """Add ``events.uid`` (NULL for the events stored so far) and its unique index."""
    if not dialect.has_column(conn, "events", "uid"):
        conn.execute("ALTER TABLE events ADD COLUMN uid TEXT")
    conn.execute(EVENTS_BY_UID)


#: Upgrades by the version they start from; each moves the schema up by one, in one transaction.
MIGRATIONS: dict[int, Callable[[SqlConnection, Dialect], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
}


def tables(conn: SqlConnection, dialect: Dialect) -> set[str]:
    """The tables there are where runcore's would be."""
    return {str(row[0]) for row in conn.execute(dialect.tables_sql()).fetchall()}


def stored_version(conn: SqlConnection) -> int:
    """The schema version ``runcore_meta`` records (0 if it records none readable)."""
    row = conn.execute("SELECT value FROM runcore_meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except ValueError:
        return 0


def check_meta(conn: SqlConnection, found: set[str], place: Place) -> int:
    """The database's schema version, after checking that it is runcore's and not newer."""
    if "runcore_meta" not in found:
        shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
        raise SchemaVersionError(
            f"{place.where} is {place.noun} but not a runcore one (it has the tables "
            f"{shown}); it was left untouched. {place.retarget_sentence}"
        )
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM runcore_meta")}
    if meta.get("app") != APP_ID:
        raise SchemaVersionError(
            f"{place.where} has a runcore_meta table but was not written by runcore; it was "
            f"left untouched. {place.retarget_sentence}"
        )
    try:
        version = int(meta.get("schema_version", "0"))
    except ValueError:
        version = 0
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{place.where} was written by a newer runcore (schema version {version}; this "
            f"runcore reads up to {SCHEMA_VERSION}). Upgrade runcore, or "
            f"{place.retarget.replace('a new', 'another')}"
        )
    if version < SCHEMA_VERSION and version not in MIGRATIONS:
        raise SchemaVersionError(
            f"{place.where} has schema version {meta.get('schema_version')!r}, which this "
            f"runcore (schema version {SCHEMA_VERSION}) cannot read or migrate; "
            f"{place.retarget}"
        )
    return version


def refuse_older(version: int, place: Place) -> SchemaVersionError:
    """The error for an older schema opened without ``auto_migrate``."""
    return SchemaVersionError(
        f"{place.where} has an older runcore schema (version {version}; this runcore "
        f"uses {SCHEMA_VERSION}); it was left untouched. Upgrade it with `runcore instance "
        f"migrate` (or Instance.migrate()), or set {place.auto_migrate}: true"
    )


def create(conn: SqlConnection, dialect: Dialect, transaction: Transaction, place: Place) -> None:
    """Create every table in one transaction, unless another process did meanwhile (then
    check that what it created is runcore's)."""

    def write(conn: SqlConnection) -> set[str]:
        existing = tables(conn, dialect)
        if not existing:
            for statement in create_statements(dialect):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO runcore_meta (key, value) VALUES (?, ?), (?, ?)",
                ("app", APP_ID, "schema_version", str(SCHEMA_VERSION)),
            )
        return existing

    existing = transaction(conn, write)
    if existing:
        check_meta(conn, existing, place)


def upgrade(conn: SqlConnection, dialect: Dialect, transaction: Transaction, place: Place) -> None:
    """Apply the migrations from the database's version up to ours, one transaction each."""

    def step(conn: SqlConnection) -> bool:
        version = stored_version(conn)  # read under the lock: another may have migrated
        migration = MIGRATIONS.get(version)
        if version >= SCHEMA_VERSION or migration is None:
            return False
        migration(conn, dialect)
        conn.execute(
            "UPDATE runcore_meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),)
        )
        return True

    while transaction(conn, step):
        pass
    if stored_version(conn) < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{place.where} has schema version {stored_version(conn)}, which this runcore "
            f"(schema version {SCHEMA_VERSION}) cannot migrate; {place.retarget}"
        )


__all__ = [
    "MIGRATIONS",
    "Place",
    "check_meta",
    "create",
    "refuse_older",
    "stored_version",
    "tables",
    "upgrade",
]
