"""PostgreSQL storage: many daemons and run workers, on many hosts, sharing one database.

The queries, transitions and migrations are the SQL core's
(:class:`~runcore.storage.sql.core.SqlStorage`); this module is PostgreSQL's part of it: the
:class:`PostgresDialect` and the connections (psycopg 3 and a ``psycopg_pool`` pool, the
``runcore[postgres]`` extra).

* Every write is one ``READ COMMITTED`` transaction. A compare-and-set reads its run ``FOR
  UPDATE``; a check and the write that depends on it (an admission's run limits, a pool's free
  slots) run under a transaction-scoped advisory lock (``pg_advisory_xact_lock``) named after
  the schema and the limit, so no limit is exceeded with any number of daemons on any hosts.
* Event ids come from a sequence and could commit out of order; every transaction that inserts
  events takes the schema's event lock first, so ids commit in the order they are handed out
  and the cross-run cursor never passes over an event that commits later.
* Timestamps written by the storage (status changes, slot claims, worker heartbeats) come
  from the server's clock (``clock_timestamp()``), which every host shares.
* Lost connections, a server restarting, serialization failures and deadlocks are retried
  with tenacity for up to 30 s (:data:`POSTGRES_TRANSIENT`), so a server restart or failover
  of a few seconds is ridden through; a failure that outlasts the budget surfaces as
  :class:`~runcore.errors.StorageError`. A lost connection takes the pool's other connections
  with it (they went with the server): the next try opens a fresh pool, which connects at
  once rather than after the pool's reconnection back-off.
* A connection lost while committing leaves the write's outcome unknown. It is tried again
  only if a second try cannot do it twice: writes that are idempotent (event inserts, whose
  uids make a second insert a no-op; heartbeats; slot releases), and writes the core can tell
  have landed (a status change, by its event's uid; a new run, by its body; a worker record,
  by its handle): if it landed, the first try's result is returned, else it is tried again.
* Nothing is written before the schema is known to be runcore's (or empty); the tables live in
  ``schema`` (default ``public``), created at its first use.
* The URL is ``url`` or ``$RUNCORE_POSTGRES_URL``; :meth:`PostgresStorage.to_config` leaves the
  password out, and a process opening a URL without one takes it from
  ``$RUNCORE_POSTGRES_URL`` (or libpq's ``PGPASSWORD`` / ``~/.pgpass``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from runcore._retry import RetrySettings
from runcore.errors import ConfigError, InstanceClosedError, SchemaVersionError, StorageError
from runcore.storage.base import StorageNotifier
from runcore.storage.postgres_dialect import DIALECT, PgConnection, PostgresDialect
from runcore.storage.sql.core import SqlStorage
from runcore.storage.sql.dialect import Landed, SqlConnection
from runcore.storage.sql.migrations import Place
from runcore.storage.sql.schema import SCHEMA_VERSION

try:
    import psycopg
    import psycopg.errors
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "PostgreSQL storage needs psycopg 3 and psycopg-pool: pip install 'runcore[postgres]'"
    ) from exc

T = TypeVar("T")

#: The environment variable holding the database URL (and its password).
URL_ENV = "RUNCORE_POSTGRES_URL"

#: How transient failures (a lost connection, a server restarting, a serialization failure, a
#: deadlock) are retried: for up to 30 s after the first failure (a server restart or a managed
#: database's failover takes seconds), waiting 0.1 s, doubled up to 1 s, between tries.
POSTGRES_TRANSIENT = RetrySettings(attempts=60, initial_wait=0.1, max_wait=1.0, deadline=30.0)

#: Seconds a call waits for one of the pool's connections: normally (all of them busy), and
#: while the server is being reconnected to (then a fresh pool is tried after each wait).
_CONNECTION_WAIT = 30.0
_RECONNECT_WAIT = 2.0

#: Seconds between measurements of the offset from this host's clock to the server's.
_CLOCK_REFRESH = 60.0

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class _CommitUnknown(Exception):
    """The connection failed while committing: the transaction may or may not have landed.
    ``result`` is what the transaction returned; ``retryable`` is set by the write that knows
    whether a second try is safe (see :meth:`PostgresStorage._write`)."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result
        self.retryable = False


def strip_password(url: str) -> str:
    """``url`` without its password (for configs passed to other processes, and messages)."""
    if "://" not in url:
        return re.sub(r"password\s*=\s*\S+", "", url).strip()
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + "@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=user + netloc[-1]))


def _password_of(url: str) -> str | None:
    if "://" not in url:
        found = re.search(r"password\s*=\s*(\S+)", url)
        return found.group(1) if found else None
    return urlsplit(url).password


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _CommitUnknown):
        return exc.retryable
    return isinstance(
        exc,
        psycopg.OperationalError
        | psycopg_pool.PoolTimeout
        | psycopg.errors.SerializationFailure
        | psycopg.errors.DeadlockDetected,
    )


class PostgresStorage(SqlStorage, StorageNotifier):
    """Runs, events, pools, workers and heartbeats in the tables of one PostgreSQL schema.

    ``url`` (a ``postgresql://`` URL or libpq string; default ``$RUNCORE_POSTGRES_URL``),
    ``schema`` (created if missing), ``pool_min``/``pool_max`` connections per process,
    ``auto_migrate`` (upgrade an older schema on open, else an error naming ``runcore instance
    migrate``) and ``retry`` (the budget for transient failures).

    Threads: the connection pool's own (``psycopg_pool`` workers that open connections and
    check them), started by :meth:`start` and stopped by :meth:`close`; and, from the first
    :meth:`subscribe`, one listener thread (``runcore-pg-listen``) on a connection of its own
    that listens (``LISTEN``) for queued and ended runs, reconnecting after a failure, stopped by
    :meth:`close`. Any thread may call any method; each call borrows a connection. A forked
    child opens its own pool on first use and leaves the parent's alone.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        schema: str = "public",
        pool_min: int = 1,
        pool_max: int = 10,
        auto_migrate: bool = False,
        retry: RetrySettings = POSTGRES_TRANSIENT,
    ) -> None:
        super().__init__(DIALECT, auto_migrate=auto_migrate)
        resolved = url or os.environ.get(URL_ENV)
        if not resolved:
            raise ConfigError(
                f"storage.postgres.url: no database URL given; set it, or set ${URL_ENV} "
                "(e.g. postgresql://user@host:5432/runcore)"
            )
        if not _IDENTIFIER.fullmatch(schema):
            raise ConfigError(
                f"storage.postgres.schema: {schema!r} is not a plain SQL identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ConfigError(
                f"storage.postgres.pool: need 0 <= min <= max and max >= 1 (got min={pool_min}, "
                f"max={pool_max})"
            )
        self.url = resolved
        self.schema = schema
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.retry = retry
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._prepared = False  # the schema is known to be runcore's (checked by start())
        self._reconnecting = False  # a connection was lost and none has worked since
        self._pid = os.getpid()
        self._offset: tuple[float, float] | None = None  # (server - here, measured at monotonic)
        self._subscribers: list[Callable[[str], None]] = []
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({strip_password(self.url)!r}, schema={self.schema!r})"

    @property
    def place(self) -> Place:
        return Place(
            where=f"the schema {self.schema!r} of {strip_password(self.url)!r}",
            noun=DIALECT.noun,
            retarget="point storage.postgres.schema at a new schema",
            auto_migrate="storage.postgres.auto_migrate",
        )

    def to_config(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "url": strip_password(self.url),
            "schema": self.schema,
            "pool": {"min": min(self.pool_min, 1), "max": self.pool_max},
        }
        if self.auto_migrate:
            settings["auto_migrate"] = True
        if type(self) is PostgresStorage:
            return {"postgres": settings}
        cls = type(self)
        return {
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "config": {
                "url": settings["url"],
                "schema": self.schema,
                "pool_min": min(self.pool_min, 1),
                "pool_max": self.pool_max,
                "auto_migrate": self.auto_migrate,
            },
        }

    def clock(self) -> float:
        """The server's clock: this host's plus the offset to the server, measured (half a
        round trip precise) on first use and again every :data:`_CLOCK_REFRESH` seconds."""
        here = time.monotonic()
        offset = self._offset
        if offset is None or here - offset[1] > _CLOCK_REFRESH:
            before = time.time()
            server = float(self._read("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")[0][0])
            after = time.time()
            offset = (server - (before + after) / 2, here)
            self._offset = offset
        return time.time() + offset[0]

    # --- connections ------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "options": f"-c search_path={self.schema}",
            "application_name": f"runcore:{self.schema}",  # who is who in pg_stat_activity
        }
        if _password_of(self.url) is None:
            password = _password_of(os.environ.get(URL_ENV, ""))
            if password:
                kwargs["password"] = password
        return kwargs

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        # No check of a connection as it is borrowed (a round trip per call): one the server
        # dropped fails its first statement, which is retried on a fresh pool.
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.url,
            min_size=self.pool_min,
            max_size=self.pool_max,
            kwargs=self._connect_kwargs(),
            open=False,
            name=f"runcore-{self.schema}",
            timeout=_CONNECTION_WAIT,
        )
        pool.open(wait=False)
        return pool

    def _get_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._closed:
            raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
        if self._pid != os.getpid():  # forked: the parent's pool is not ours to use or close
            self._lock = threading.Lock()
            self._pool = None
            self._pid = os.getpid()
        pool = self._pool
        if pool is None:
            if not self._prepared:
                self.start()
            else:  # dropped after a lost connection: a fresh one (it connects in the background)
                with self._lock:
                    if self._closed:
                        raise InstanceClosedError(
                            f"{self!r} is closed; create a new {type(self).__name__}"
                        )
                    if self._pool is None:
                        self._pool = self._new_pool()
            pool = self._pool
            assert pool is not None
        return pool

    def _drop_pool(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        """Forget ``pool`` after one of its connections was lost (the server went away, and
        its other connections with it): the next call opens a fresh pool. The old one is
        closed on a thread of its own (connections still lent out close when given back)."""
        with self._lock:
            if self._pool is not pool:
                return  # another thread did it already
            self._pool = None
            self._reconnecting = True
        threading.Thread(
            target=lambda: pool.close(timeout=1.0), name="runcore-pg-drop-pool", daemon=True
        ).start()

    # --- lifecycle --------------------------------------------------------------------------

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create the schema if it is missing; called holding the schema lock."""
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
        ).fetchone()
        if found is None:
            # IF NOT EXISTS does not make two concurrent creations safe (both pass the check
            # and one fails on the catalog's unique index); the lock does, against runcore.
            # Another program creating it at the same moment is what the except is for.
            with suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def _with_schema_lock(self, fn: Callable[[SqlConnection], T]) -> T:
        """Run ``fn`` on a fresh connection holding the schema's session advisory lock, so that
        processes opening a new schema at once create it once (the lock is taken before the
        schema is looked for); a server that is unreachable for a while is retried
        (:attr:`retry`)."""

        def attempt() -> T:
            conn = psycopg.connect(self.url, **self._connect_kwargs())
            try:
                key = f"{self.schema}:runcore.schema"
                conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
                self._ensure_schema(conn)
                return fn(PgConnection(conn))
            finally:
                with suppress(psycopg.Error):
                    conn.close()

        try:
            return self._retrying(attempt)
        except (psycopg.Error, _CommitUnknown) as exc:
            raise self._error(exc) from exc

    def start(self) -> None:
        if self._pid != os.getpid():
            self._pool = None
            self._lock = threading.Lock()
            self._pid = os.getpid()
        with self._lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
            if self._pool is not None:
                return
            if not self._prepared:
                self._with_schema_lock(self._prepare)
                self._prepared = True
            self._pool = self._new_pool()

    def migrate(self) -> tuple[int, int]:
        """Upgrade the schema's tables to this runcore's, in place; returns (from, to) versions.

        Each step is one transaction; a schema at the current version is left as it is. A
        newer schema, or one holding tables that are not runcore's, is refused untouched.
        """
        with self._lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
            before = self._with_schema_lock(self._migrate_schema)
        return before, SCHEMA_VERSION

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
        self._stop_listening.set()
        if listener is not None and self._pid == os.getpid():
            listener.join(timeout=5.0)
        if pool is not None and self._pid == os.getpid():
            with suppress(Exception):
                pool.close(timeout=5.0)

    # --- notifications ----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        with self._lock:
            if self._closed:
                raise InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
            self._subscribers.append(callback)
            if self._listener is None or self._pid != os.getpid():
                self._stop_listening = threading.Event()
                self._listener = threading.Thread(
                    target=self._listen, name="runcore-pg-listen", daemon=True
                )
                self._listener.start()

        def unsubscribe() -> None:
            with self._lock, suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _listen(self) -> None:
        """The listener thread: LISTEN on the schema's channel, pass each notification on;
        after a failure, wait a second and connect again (polling covers the gap)."""
        stop = self._stop_listening
        channel = f"runcore_{self.schema}"
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, **self._connect_kwargs()) as conn:
                    conn.execute(f'LISTEN "{channel}"')
                    self._deliver("reconnected")  # something may have happened meanwhile
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._deliver(note.payload)
            except psycopg.Error:
                stop.wait(1.0)

    def _deliver(self, kind: str) -> None:
        for callback in list(self._subscribers):
            with suppress(Exception):
                callback(kind)

    # --- transactions -----------------------------------------------------------------------

    def _transaction(self, conn: SqlConnection, fn: Callable[[SqlConnection], T]) -> T:
        assert isinstance(conn, PgConnection)
        raw = conn.raw
        raw.execute("BEGIN")
        try:
            result = fn(conn)
        except BaseException:
            with suppress(psycopg.Error):
                raw.execute("ROLLBACK")
            raise
        try:
            self._commit(raw)
        except psycopg.OperationalError as exc:
            raise _CommitUnknown(str(exc), result) from exc
        return result

    def _commit(self, raw: psycopg.Connection[Any]) -> None:
        raw.execute("COMMIT")

    def _retrying(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc):
                raise
        import tenacity

        settings = self.retry
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(max(settings.attempts - 1, 1))
        if settings.deadline is not None:
            stop = stop | tenacity.stop_after_delay(settings.deadline)
        retrying = tenacity.Retrying(
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=settings.initial_wait, max=settings.max_wait)
            + tenacity.wait_random(0, settings.initial_wait),
            retry=tenacity.retry_if_exception(_is_transient),
            reraise=True,
        )
        return retrying(fn)

    def _on_connection(self, fn: Callable[[PgConnection], T]) -> T:
        """``fn`` on a connection of the pool; a lost connection drops the pool (see
        :meth:`_drop_pool`) before the error goes on to be retried."""
        pool = self._get_pool()
        raw: psycopg.Connection[Any] | None = None
        try:
            wait = _RECONNECT_WAIT if self._reconnecting else _CONNECTION_WAIT
            with pool.connection(timeout=wait) as raw:
                result = fn(PgConnection(raw))
        except psycopg_pool.PoolTimeout:
            if self._reconnecting:  # the fresh pool has not connected yet: a fresher one
                self._drop_pool(pool)
            raise
        except Exception:
            if raw is not None and (raw.broken or raw.closed):
                self._drop_pool(pool)
            raise
        self._reconnecting = False
        return result

    def _write(
        self,
        fn: Callable[[SqlConnection], T],
        *,
        idempotent: bool = False,
        landed: Landed | None = None,
    ) -> T:
        unsure: list[_CommitUnknown] = []  # a try whose commit was lost, to be resolved

        def attempt() -> T:
            if unsure and landed is not None:
                sql, params = landed
                row = self._on_connection(lambda conn: conn.execute(sql, params).fetchone())
                if row is not None:
                    return cast(T, unsure[0].result)  # it did commit
                unsure.clear()  # it did not: a new try is safe
            try:
                return self._on_connection(lambda conn: self._transaction(conn, fn))
            except _CommitUnknown as exc:
                exc.retryable = idempotent or landed is not None
                if landed is not None:
                    unsure[:] = [exc]
                raise

        try:
            return self._retrying(attempt)
        except (psycopg.Error, psycopg_pool.PoolTimeout, _CommitUnknown) as exc:
            raise self._error(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._retrying(
                lambda: self._on_connection(lambda conn: conn.execute(sql, params).fetchall())
            )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> Exception:
        """``exc`` translated into runcore's error tree, naming the database (no password)."""
        where = f"PostgreSQL {strip_password(self.url)!r} (schema {self.schema!r})"
        text = str(exc).strip()
        if self._closed and isinstance(exc, psycopg_pool.PoolClosed):
            return InstanceClosedError(f"{self!r} is closed; create a new {type(self).__name__}")
        if isinstance(exc, _CommitUnknown):
            return StorageError(
                f"the connection to {where} was lost while committing; the last write may or "
                f"may not have been stored (PostgreSQL says: {text})"
            )
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return SchemaVersionError(
                f"{where}: permission denied ({text}); grant this user the use of the schema, "
                "or point storage.postgres.schema elsewhere"
            )
        if _is_transient(exc):
            return StorageError(
                f"{where} stayed unreachable or kept failing through the retries "
                f"({self.retry.describe()}; PostgreSQL says: {text}); check that the server "
                "is up and reachable from this host"
            )
        return StorageError(f"PostgreSQL error on {where}: {text}")


__all__ = ["DIALECT", "URL_ENV", "PostgresDialect", "PostgresStorage", "strip_password"]
