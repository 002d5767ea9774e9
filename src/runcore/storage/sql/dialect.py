"""The seam between the SQL core and one database: the few statements that differ.

The core (:class:`~runcore.storage.sql.core.SqlStorage`) writes every query, transition and
migration once, in the SQL that SQLite and PostgreSQL both speak (standard ``INSERT ... ON
CONFLICT ... DO UPDATE`` upserts, ``CASE``, partial indexes), with ``?`` placeholders. A
database brings two things:

* a :class:`Dialect`, stateless: the column types, JSON functions, row and advisory locks, the
  clock and the id of an inserted row, where they differ;
* a subclass of ``SqlStorage`` that owns its connections: opening and pooling them, running a
  write transaction (``BEGIN IMMEDIATE`` and busy retries on SQLite; ``BEGIN`` plus retries of
  serialization failures on PostgreSQL), and translating driver errors into runcore's.

What each dialect fills in, and what PostgreSQL will need:

================================  ==========================  =================================
need                              SQLite                      PostgreSQL
================================  ==========================  =================================
placeholders                      ``?`` as written            ``%s``: :func:`format_placeholders`
auto-increment key                ``INTEGER PRIMARY KEY       ``BIGSERIAL PRIMARY KEY``
                                  AUTOINCREMENT``
id of an inserted row             ``cursor.lastrowid``        ``... RETURNING id``
JSON field of ``body``            ``json_extract``            ``body::jsonb -> / ->>``
row lock in a write transaction   none (the database lock)    ``FOR UPDATE``
serialize a check and its write   none (``BEGIN IMMEDIATE``   ``pg_advisory_xact_lock``
(limits, pool slots)              holds the whole file)
clock                             this host's                 the server's (``clock_timestamp``)
cross-run event cursor            ids commit in order         only below the oldest running
                                                              writer (:meth:`events_visible`)
================================  ==========================  =================================
"""

from __future__ import annotations

import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol


class SqlCursor(Protocol):
    """What the core reads from a cursor (DB-API)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlConnection(Protocol):
    """The connection the core's statements run on: DB-API ``execute`` with ``?`` placeholders.

    ``sqlite3.Connection`` is one as it is; a driver with another paramstyle is wrapped by its
    storage, translating with :func:`format_placeholders`.
    """

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any: ...


#: A query (``?`` placeholders) and its parameters that return a row if, and only if, a write
#: committed: how a write whose commit was lost on the way back is resolved
#: (``SqlStorage._write(..., landed=...)``).
Landed = tuple[str, Sequence[Any]]


class Dialect(ABC):
    """The statements of one database that differ from the shared SQL (see the module doc).

    Stateless: one instance serves every storage of its database kind. JSON paths are
    runcore's own constant keys, never user input, and may be written into the SQL as literals.
    """

    #: The storage config key of this database (``storage: {sqlite: ...}``).
    name: ClassVar[str]
    #: How messages call such a database: "an SQLite database".
    noun: ClassVar[str]
    #: The column definition of an auto-increment primary key that never reuses an id.
    id_key: ClassVar[str]
    #: The floating-point column type (timestamps).
    real_type: ClassVar[str] = "REAL"
    #: The column type of a reference to an auto-increment key.
    bigint_type: ClassVar[str] = "BIGINT"
    #: Appended to ``CREATE TABLE`` of tables with a natural primary key.
    without_rowid: ClassVar[str] = ""
    #: Appended to a ``SELECT`` of rows a write transaction goes on to change.
    for_update: ClassVar[str] = ""
    #: The same, leaving out rows another transaction has locked instead of waiting for them.
    skip_locked: ClassVar[str] = ""
    #: The exceptions a unique constraint violation raises.
    integrity_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Values the core binds at most in one ``IN (...)`` list.
    max_in_list: ClassVar[int] = 500
    #: Whether events get a client-generated ``uid`` (a retried insert is then ignored): where
    #: a write may be retried after its commit was lost (a server), not SQLite.
    event_uids: ClassVar[bool] = False
    #: Statements run before the tables are created (helper functions the dialect's SQL uses).
    schema_preamble: ClassVar[tuple[str, ...]] = ()

    # --- the catalogue ----------------------------------------------------------------------

    @abstractmethod
    def tables_sql(self) -> str:
        """A query listing the names of the tables of runcore's schema space (one column)."""

    @abstractmethod
    def has_column(self, conn: SqlConnection, table: str, column: str) -> bool:
        """Whether ``table`` of runcore's schema space has ``column`` (for migrations)."""

    # --- JSON in ``body`` columns -----------------------------------------------------------

    @abstractmethod
    def json_valid(self, column: str) -> str:
        """A condition true where ``column`` holds JSON that parses."""

    @abstractmethod
    def json_has(self, column: str, path: Sequence[str]) -> str:
        """A condition true where ``column`` has a value (even JSON ``null``) at ``path``."""

    @abstractmethod
    def json_field(self, column: str, path: Sequence[str]) -> str:
        """The JSON value at ``path`` (object keys) inside ``column``, as JSON (text, or a
        value the driver decodes); NULL where absent."""

    @abstractmethod
    def json_text(self, column: str, path: Sequence[str]) -> str:
        """The value at ``path`` inside ``column`` as SQL text (a string unquoted); NULL where
        absent."""

    @abstractmethod
    def json_remove(self, column: str, paths: Sequence[Sequence[str]]) -> str:
        """``column`` (JSON text) with the values at ``paths`` removed, as text."""

    @abstractmethod
    def json_rows(self, columns: Sequence[str], source: str, order_by: str) -> str:
        """A query of one row and one column: the rows of ``source`` as one JSON array of
        arrays of ``columns`` (JSON values), ordered by ``order_by``; an empty array for none.
        Decoding one JSON document is far cheaper than a row at a time."""

    # --- locking, ids and time inside a write transaction ------------------------------------

    def lock(self, conn: SqlConnection, name: str) -> None:  # noqa: B027 - optional hook
        """Serialize, until the transaction ends, with every other transaction taking the lock
        ``name``: what a check-then-write (a limit, a pool slot) takes first. A database whose
        write transactions already exclude each other (SQLite) does nothing."""

    def notify(self, conn: SqlConnection, kind: str) -> None:  # noqa: B027 - optional hook
        """Tell listening processes, once the transaction commits, that a run was ``kind``
        (``queued`` or ``ended``): see :class:`~runcore.storage.base.StorageNotifier`."""

    @abstractmethod
    def insert_id(self, conn: SqlConnection, sql: str, params: Sequence[Any]) -> int:
        """Run the ``INSERT`` ``sql`` into a table with an ``id`` key; the new row's id, or 0
        if ``ON CONFLICT DO NOTHING`` inserted none."""

    def insert_ids(self, conn: SqlConnection, sql: str, rows: Sequence[Sequence[Any]]) -> list[int]:
        """:meth:`insert_id` of each of ``rows``, in order (a database with a cheaper way to
        insert many rows and read their ids back overrides it)."""
        return [self.insert_id(conn, sql, row) for row in rows]

    def now(self, conn: SqlConnection) -> float:
        """The storage's clock, in Unix seconds: this host's unless the database has one that
        every host shares (a server's)."""
        return time.time()

    def events_visible(self) -> str:
        """An extra condition (``AND ...``) on ``events`` for the cross-run cursor, so that no
        event is passed over and committed later with a lower id. Empty where ids commit in
        the order they are handed out (one writer at a time)."""
        return ""


def tags_of(value: Any) -> dict[str, str]:
    """A run's tags from a JSON field read back (text, or decoded by the driver); ``{}`` for
    anything that is not a mapping of strings (a corrupt run is still counted, tag-less)."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


@functools.lru_cache(maxsize=512)
def format_placeholders(sql: str) -> str:
    """``sql`` with ``?`` placeholders turned into ``%s`` (and ``%`` doubled), outside quoted
    strings: for drivers of the ``format`` paramstyle (psycopg)."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote is not None:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


__all__ = ["Dialect", "Landed", "SqlConnection", "SqlCursor", "format_placeholders", "tags_of"]
