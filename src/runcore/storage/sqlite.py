"""SQLite storage: the embedded default. One file, many threads and processes.

The queries, transitions and migrations are the SQL core's
(:class:`~runcore.storage.sql.core.SqlStorage`); this module is SQLite's part of it: the
:class:`SqliteDialect` (``json_extract`` and friends, ``AUTOINCREMENT``) and the connections.

* WAL journal, ``synchronous=NORMAL`` (durable across process crashes; a power loss may drop
  the last commits), and a busy timeout so concurrent writers wait instead of failing.
* A small pool of connections per process: a call borrows one and gives it back, so the
  number of open connections follows the number of concurrent calls, not the number of
  threads that ever touched the storage. A forked child never uses its parent's connections.
* Every write is one ``BEGIN IMMEDIATE`` transaction, so a writer takes the lock up front and
  the busy handler, not an error, resolves contention. One writer at a time also means that
  every check-then-write of the core (limits, pool slots) needs no lock of its own, and that
  event ids commit in the order they are handed out (the cross-run cursor is gap-free). A lock
  that outlasts the busy timeout is retried a few more times (:mod:`runcore._retry`) before it
  surfaces as :class:`StorageError`.
* Nothing is written (not even the switch to WAL) before the file is known to be runcore's
  (:mod:`runcore.storage.sql.migrations`); the daemon checks every pass that the file it
  opened is still the one at ``path`` (:meth:`SqliteStorage.check_identity`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from runcore import _validate
from runcore._retry import retry_sqlite_locked
from runcore.errors import InstanceClosedError, SchemaVersionError, StorageError
from runcore.storage.sql.core import SqlStorage
from runcore.storage.sql.dialect import Dialect, Landed, SqlConnection
from runcore.storage.sql.migrations import Place
from runcore.storage.sql.schema import APP_ID, SCHEMA_VERSION

T = TypeVar("T")

#: Per-connection settings. ``synchronous=NORMAL`` is the durability promise (see the module
#: docstring); the rest only trade memory for speed: an 8 MiB page cache, temporary sort
#: tables in memory, and a WAL that is checkpointed every 4,000 pages (8 MiB with 2 KiB pages)
#: instead of 1,000, which makes the fsync of a checkpoint four times rarer.
_PRAGMAS = (
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-8192",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA wal_autocheckpoint=4000",
)

#: Page size of a new database file (SQLite's default is 4096). Measured on ext4: one-row
#: commits (``add_run``, ``store_event``) are about 30% faster at 2048 while reads are no slower.
_PAGE_SIZE = 2048

#: Idle connections kept per process; more concurrent calls open more, closed on return.
_MAX_IDLE = 16


def _path(path: Sequence[str]) -> str:
    """A JSON path literal: ``'$."tags"."team"'``."""
    return "'$" + "".join(f'."{key}"' for key in path) + "'"


class SqliteDialect(Dialect):
    """SQLite's statements: JSON1 functions, ``AUTOINCREMENT``, ``WITHOUT ROWID``; no locks of
    its own (a ``BEGIN IMMEDIATE`` transaction holds the whole file)."""

    name = "sqlite"
    noun = "an SQLite database"
    id_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    bigint_type = "INTEGER"
    without_rowid = " WITHOUT ROWID"
    integrity_errors = (sqlite3.IntegrityError,)

    def tables_sql(self) -> str:
        return "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"

    def has_column(self, conn: SqlConnection, table: str, column: str) -> bool:
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
        return any(row[1] == column for row in rows)

    def json_valid(self, column: str) -> str:
        return f"json_valid({column})"

    def json_has(self, column: str, path: Sequence[str]) -> str:
        return f"json_type({column}, {_path(path)}) IS NOT NULL"

    def json_field(self, column: str, path: Sequence[str]) -> str:
        return f"json_extract({column}, {_path(path)})"

    def json_text(self, column: str, path: Sequence[str]) -> str:
        return f"json_extract({column}, {_path(path)})"

    def json_remove(self, column: str, paths: Sequence[Sequence[str]]) -> str:
        return f"json_remove({column}, {', '.join(_path(path) for path in paths)})"

    def json_rows(self, columns: Sequence[str], source: str, order_by: str) -> str:
        return (
            f"SELECT json_group_array(json_array({', '.join(columns)})) "
            f"FROM ({source} ORDER BY {order_by})"
        )

    def insert_id(self, conn: SqlConnection, sql: str, params: Sequence[Any]) -> int:
        cur = conn.execute(sql, params)
        return int(cur.lastrowid or 0) if cur.rowcount > 0 else 0


DIALECT = SqliteDialect()


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in one IMMEDIATE transaction: committed on success, rolled back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


class SqliteStorage(SqlStorage):
    """Runs, events, pools and heartbeats in one SQLite file at ``path``.

    ``busy_timeout`` (seconds) is how long a call waits for another writer's lock before the
    retries of :mod:`runcore._retry` start. ``auto_migrate`` upgrades an older schema on open
    (else that is an error naming ``runcore instance migrate``).

    Threads: none of its own. Any thread may call any method; each call borrows a connection
    from a per-process pool. :meth:`close` closes the idle connections at once and the
    borrowed ones as they are given back; later calls raise
    :class:`~runcore.errors.InstanceClosedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        auto_migrate: bool = False,
    ) -> None:
        super().__init__(DIALECT, auto_migrate=auto_migrate)
        self.path = os.fspath(path)
        self.busy_timeout = _validate.duration("SqliteStorage(busy_timeout=...)", busy_timeout)
        self._idle: deque[sqlite3.Connection] = deque()
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._pid = os.getpid()
        # Connections inherited through fork: never used, and never closed (closing them in
        # the child could disturb the parent's locks), just kept referenced.
        self._inherited: list[sqlite3.Connection] = []
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    @property
    def place(self) -> Place:
        return Place(
            where=repr(self.path),
            noun=DIALECT.noun,
            retarget="point storage.sqlite.path at a new file",
            auto_migrate="storage.sqlite.auto_migrate",
        )

    def to_config(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"path": os.path.abspath(self.path)}
        if self.auto_migrate:
            settings["auto_migrate"] = True
        if type(self) is SqliteStorage:
            return {"sqlite": settings}
        # A subclass is a plug-in: the same class on the same file in the worker.
        settings["busy_timeout"] = self.busy_timeout
        cls = type(self)
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": settings}

    def default_outputs_dir(self) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), "outputs")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._start_lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
            if self._started:
                return
            self._check_location()
            conn = self._connect()
            try:
                retry_sqlite_locked(lambda: self._prepare(conn), _is_locked)
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
            self._idle.append(conn)
            self._identity = self._file_identity()
            self._started = True

    def migrate(self) -> tuple[int, int]:
        """Upgrade the file's schema to this runcore's, in place; returns (from, to) versions.

        Each step is one transaction; a file at the current version is left as it is. A newer
        schema or a file that is not a runcore database is refused untouched.
        """
        with self._start_lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
            self._check_location()
            conn = self._connect()
            try:
                before = retry_sqlite_locked(lambda: self._migrate_schema(conn), _is_locked)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            finally:
                with suppress(sqlite3.Error):
                    conn.close()
        return before, SCHEMA_VERSION

    def close(self) -> None:
        self._closed = True
        if self._pid != os.getpid():
            return  # connections inherited through fork belong to the parent
        self._drain_idle()

    def _before_first_write(self, conn: SqlConnection, *, empty: bool) -> None:
        if empty:
            # Before the first write, while the file is still empty. Small pages make a commit
            # cheaper: it appends whole pages to the WAL, and a run or event dirties several.
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(
                f"cannot switch the SQLite database {self.path!r} to WAL mode (it stays in "
                f"{mode!r} mode); put it on a local filesystem that supports shared memory"
            )

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check_identity(self) -> None:
        """Raise :class:`StorageError` if the database file was deleted, replaced or became
        unreadable since :meth:`start`: a process that goes on would write to an unlinked
        file no one else sees."""
        if self._identity is None or self._closed:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StorageError(
                f"the SQLite database {self.path!r} was deleted while this process used it; "
                "stopping rather than going on against the unlinked file. Restore it, or "
                "start again against a new database"
            ) from None
        except OSError as exc:
            raise StorageError(
                f"the SQLite database {self.path!r} cannot be checked any more ({exc}); stopping"
            ) from exc
        if (st.st_dev, st.st_ino) != self._identity:
            raise StorageError(
                f"the SQLite database {self.path!r} was replaced by another file while this "
                "process used it; stopping rather than mixing two databases. Start again to "
                "use the new file"
            )
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise StorageError(
                f"the SQLite database {self.path!r} is no longer readable and writable by this "
                "process; stopping. Fix its permissions and start again"
            )

    def _check_location(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot use {self.path!r} as the SQLite database: its directory {directory!r} "
                f"cannot be created ({exc}); set storage.sqlite.path to a file in a writable "
                "directory"
            ) from exc
        if os.path.isdir(self.path):
            raise StorageError(
                f"the SQLite database path {self.path!r} is a directory; give a file path, "
                "e.g. storage.sqlite.path: .runcore/runs.db"
            )

    # --- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        return conn

    def _acquire(self) -> sqlite3.Connection:
        if self._closed:
            raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
        if self._pid != os.getpid():
            self._after_fork()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        if not self._started:
            self.start()
            with suppress(IndexError):
                return self._idle.pop()
        return self._connect()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if self._closed or len(self._idle) >= _MAX_IDLE:
            with suppress(sqlite3.Error):
                conn.close()
            return
        self._idle.append(conn)
        self._drain_if_closed()  # close() may have run between the check and the append

    def _drain_if_closed(self) -> None:
        if self._closed:
            self._drain_idle()

    def _drain_idle(self) -> None:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            with suppress(sqlite3.Error):
                conn.close()

    def _after_fork(self) -> None:
        """In a forked child: set the parent's connections aside and start a fresh pool."""
        self._start_lock = threading.Lock()
        self._inherited.extend(self._idle)
        self._idle = deque()
        self._pid = os.getpid()

    def _error(self, exc: sqlite3.Error) -> Exception:
        """``exc`` translated into runcore's error tree, naming the database."""
        text = str(exc)
        if self._closed and isinstance(exc, sqlite3.ProgrammingError):
            return InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
        if "not a database" in text or "malformed" in text or "encrypted" in text:
            return SchemaVersionError(
                f"{self.path!r} is not a runcore database (SQLite says: {text}); it was left "
                "untouched. Point storage.sqlite.path at a new file or a runcore database"
            )
        if _is_locked(exc):
            return StorageError(
                f"the SQLite database {self.path!r} stayed locked by another writer for longer "
                f"than the busy timeout ({self.busy_timeout:g} s) and the retries after it "
                f"(SQLite says: {text}); look for a process holding a long transaction on it, "
                "or raise busy_timeout"
            )
        if "unable to open" in text or "readonly" in text or "read-only" in text:
            return StorageError(
                f"cannot open the SQLite database {self.path!r} for writing (SQLite says: "
                f"{text}); check that the path exists and is writable, or set "
                "storage.sqlite.path elsewhere"
            )
        return StorageError(f"SQLite error on {self.path!r}: {text}")

    def _transaction(self, conn: SqlConnection, fn: Callable[[SqlConnection], T]) -> T:
        assert isinstance(conn, sqlite3.Connection)
        return _in_transaction(conn, fn)

    def _write(
        self,
        fn: Callable[[SqlConnection], T],
        *,
        idempotent: bool = False,
        landed: Landed | None = None,
    ) -> T:
        """Run ``fn`` in one write transaction, retrying a lock that outlasted the timeout.
        (A local file loses no commit on the way back: ``idempotent`` and ``landed`` are not
        needed.)"""
        conn = self._acquire()
        try:
            return retry_sqlite_locked(lambda: _in_transaction(conn, fn), _is_locked)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._give_back(conn)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._acquire()
        try:
            return retry_sqlite_locked(lambda: conn.execute(sql, params).fetchall(), _is_locked)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._give_back(conn)


__all__ = ["APP_ID", "SCHEMA_VERSION", "SqliteDialect", "SqliteStorage"]
