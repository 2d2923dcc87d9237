"""The database: one SQLAlchemy async engine over SQLite (aiosqlite) or PostgreSQL (asyncpg).

SQLite is the embedded default (``app.db`` in the data directory, nothing to run); PostgreSQL is
for several replicas sharing one user store. The stores write SQLAlchemy Core statements, which
each backend renders in its own dialect. Opening the database brings its schema up to date
(``app.db.migrate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.errors import DatabaseDown

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

# SQLSTATE classes of a server that cannot serve right now: connection exceptions (08),
# insufficient resources (53), operator intervention such as a restart or shutdown (57).
_OUTAGE_CLASSES = ("08", "53", "57")
# At most one error line per this many seconds while the database does not answer.
_OUTAGE_LOG_SECONDS = 10.0
_last_outage_log = -math.inf


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached or used right now (a server
    stopped, restarting or out of connections, a network failure), rather than a bad statement."""
    if isinstance(error, OSError | sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    if isinstance(error, sa.exc.TimeoutError):  # no free connection in the pool
        return True
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        code = str(getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None))
        return code[:2] in _OUTAGE_CLASSES
    if isinstance(error, sa.exc.StatementError):
        return isinstance(error.orig, OSError)
    return False


def _down(error: BaseException) -> DatabaseDown:
    global _last_outage_log
    now = time.monotonic()
    if now - _last_outage_log >= _OUTAGE_LOG_SECONDS:  # loud, not a flood
        _last_outage_log = now
        logger.error("the database does not answer: %s", _reason(error))
    return DatabaseDown()


@contextlib.contextmanager
def _outages() -> Iterator[None]:
    """Raises ``DatabaseDown`` (a 503) for an error that means the database is unreachable."""
    try:
        yield
    except Exception as exc:
        if is_outage(exc):
            raise _down(exc) from exc
        raise


class SchemaTooNew(Exception):
    """The database was migrated by a newer release than this one."""


class DatabaseUnavailable(Exception):
    """The database cannot be opened, written or read."""

    def __init__(self, where: str, cause: BaseException, *, hint: str) -> None:
        super().__init__(f"cannot use the database {where}: {_reason(cause)}; {hint}")


def _refused_for_good(error: BaseException) -> bool:
    """A wrong password, user or database name: waiting would not help."""
    orig = getattr(error, "orig", None)
    code = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    return code.startswith("28") or code == "3D000"


def _reason(error: BaseException) -> str:
    """An error's first line, the driver's own where SQLAlchemy wrapped it."""
    cause = getattr(error, "orig", None) or error
    text = getattr(cause, "strerror", None) or str(cause).strip()
    return (text.splitlines() or [type(cause).__name__])[0]


def database_url(url: str | URL | None, data_dir: Path) -> URL:
    """``APP_DATABASE_URL`` as SQLAlchemy's async URL; unset: ``app.db`` in ``data_dir``."""
    parsed = make_url(url or f"sqlite:///{data_dir / 'app.db'}")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        query = dict(parsed.query)
        if "sslmode" in query:  # libpq's name; asyncpg takes the same values as "ssl"
            query.setdefault("ssl", query.pop("sslmode"))
        return parsed.set(drivername="postgresql+asyncpg", query=query)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


class Database:
    """The engine, opened (and migrated) by ``open`` or the app's lifespan.

    Every ``execute`` is one transaction, committed on return; ``transaction`` groups several.
    """

    def __init__(self, url: str | URL | Path, *, connect_wait: float = 30.0) -> None:
        """``url``: a database URL (see ``database_url``), or a SQLite file's path.
        ``connect_wait``: seconds ``open`` waits for a database server that is not up yet
        (started beside the service, it may take a while to accept connections)."""
        self._connect_wait = connect_wait
        self.url = database_url(f"sqlite:///{url}" if isinstance(url, Path) else url, Path())
        self._engine: AsyncEngine | None = None
        self._direct: SQLiteDirect | None = None

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for a database server."""
        return Path(self.url.database or "") if self.dialect == "sqlite" else None

    @property
    def where(self) -> str:
        """The database, for messages: the file, or the URL without its password."""
        if self.path is not None:
            return str(self.path)
        return self.url.set(drivername=self.dialect).render_as_string(hide_password=True)

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        if self.path is not None:
            hint = (
                "check that APP_DATA_DIR is a writable directory and that the file is an intact "
                "SQLite database (restore a backup if not)."
            )
        else:
            hint = "check APP_DATABASE_URL and that the server is up and accepts this user."
        return DatabaseUnavailable(self.where, exc, hint=hint)

    async def open(self) -> None:
        """Connects and brings the schema up to date (``app.db.migrate``).

        Raises ``DatabaseUnavailable`` with one sentence naming the database when it cannot be
        reached or is not a database, and ``SchemaTooNew`` for a newer release's database.
        """
        from app.db import migrate  # Alembic is only needed here

        path = self.path
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._engine = self._make_engine()
            if path is None:
                await self._reachable()
            await migrate.upgrade(self)
            if path is not None:
                os.chmod(path, 0o600)
                self._direct = SQLiteDirect(self.url)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, migrate.LegacyError):
                raise self._unavailable(exc.__cause__ or exc) from None
            if isinstance(exc, sa.exc.DBAPIError | OSError | sa.exc.ArgumentError | TypeError):
                # TypeError: a URL option the driver does not take (asyncpg's connect()).
                raise self._unavailable(exc) from None
            raise

    async def _reachable(self) -> None:
        """Waits up to ``connect_wait`` seconds for the server to accept a connection."""
        deadline = time.monotonic() + self._connect_wait
        while True:
            try:
                async with self.engine.connect():
                    return
            except (sa.exc.DBAPIError, OSError) as exc:
                if time.monotonic() >= deadline or _refused_for_good(exc):
                    raise
                logger.warning("waiting for the database %s: %s", self.where, _reason(exc))
                await asyncio.sleep(2)

    def _make_engine(self) -> AsyncEngine:
        if self.dialect != "sqlite":
            return create_async_engine(
                self.url,
                # Error messages never carry the values bound (password hashes, the secret).
                hide_parameters=True,
                pool_size=8,
                max_overflow=8,
                # A connection the server closed (a restart, an idle timeout) is replaced.
                pool_pre_ping=True,
                connect_args={"timeout": 10},
            )
        engine = create_async_engine(self.url, hide_parameters=True)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _: object) -> None:
            # The driver's own transaction handling is off; SQLAlchemy's BEGIN (below) makes
            # each transaction, DDL included, all-or-nothing.
            dbapi_connection.isolation_level = None
            _sqlite_settings(dbapi_connection, writes=True)
            cursor = dbapi_connection.cursor()
            # Switched once, by the first connection (under the migration lock); asking again
            # while other connections are open could fail at once with "database is locked".
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: sa.Connection) -> None:
            # BEGIN IMMEDIATE (execution option sqlite_begin="IMMEDIATE") takes the write lock
            # at once, for a transaction that reads before it writes while other processes
            # write: a deferred one would fail as soon as its snapshot went stale.
            mode = connection.get_execution_options().get("sqlite_begin", "")
            connection.exec_driver_sql(f"BEGIN {mode}".strip())

        return engine

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: open (and migrated) while it runs."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the database is not open")
        return self._engine

    def insert(self, table: sa.Table) -> Any:
        """An INSERT in this backend's dialect, which has ``on_conflict_do_update`` and
        ``on_conflict_do_nothing`` (the same API on SQLite and PostgreSQL)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def unix_time(self) -> sa.ColumnElement[int]:
        """The database's clock in whole seconds since the epoch, as an SQL expression: one
        clock for every replica, whatever their own say."""
        if self.dialect == "postgresql":
            return sa.cast(sa.func.floor(sa.extract("epoch", sa.func.now())), sa.BigInteger)
        return sa.cast(sa.func.strftime("%s", "now"), sa.Integer)

    @contextlib.asynccontextmanager
    async def transaction(self, *, exclusive: bool = False) -> AsyncIterator[AsyncConnection]:
        """One connection in one transaction, committed when the block ends without error.
        ``exclusive``: on SQLite, the write lock is taken at BEGIN, so a transaction that reads
        before it writes runs alone (PostgreSQL's callers lock the rows they read instead).

        Raises ``DatabaseDown`` (a 503) when the database does not answer; nothing is written.
        """
        with _outages():
            async with self.engine.connect() as connection:
                if exclusive:
                    await connection.execution_options(sqlite_begin="IMMEDIATE")
                async with connection.begin():
                    yield connection

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        with _outages():
            async with self.engine.connect() as connection:
                yield connection

    async def _read(self, statement: sa.Executable, rows: Callable[[sa.Result[Any]], _R]) -> _R:
        """``rows(result)`` of one query: on SQLite directly (one thread hop, see
        ``SQLiteDirect``), on a server through the pool's async driver."""
        if self._direct is not None:
            with _outages():
                return await self._direct.read(statement, rows)
        async with self._reading() as connection:
            return rows(await connection.execute(statement))

    async def fetch_one(self, statement: sa.Executable) -> RowMapping | None:
        """The first row of a query, or None."""
        return await self._read(statement, lambda result: result.mappings().first())

    async def fetch_all(self, statement: sa.Executable) -> Sequence[RowMapping]:
        """Every row of a query."""
        return await self._read(statement, lambda result: result.mappings().all())

    async def scalar(self, statement: sa.Executable) -> Any:
        """The first column of the first row, or None."""
        return await self._read(statement, lambda result: result.scalar())

    async def execute(self, statement: sa.Executable) -> int:
        """Runs one statement, committed on return; the number of rows it changed."""
        if self._direct is not None:
            with _outages():
                return await self._direct.write(statement)
        async with self.transaction() as connection:
            result = await connection.execute(statement)
            return int(result.rowcount)

    async def execute_returning(self, statement: sa.Executable) -> RowMapping:
        """Runs one statement with a RETURNING clause, committed on return; its one row."""
        async with self.transaction() as connection:
            result = await connection.execute(statement)
            return result.mappings().one()

    def sync_engines(self) -> list[sa.Engine]:
        """Every engine whose connections reach the database (for tests that change how new
        connections behave); ``reconnect`` replaces the open ones."""
        direct = [self._direct.reads, self._direct.writes] if self._direct is not None else []
        return [self.engine.sync_engine, *direct]

    async def reconnect(self) -> None:
        """Closes the pooled connections; the next statements open new ones."""
        await self.engine.dispose()
        for engine in self.sync_engines()[1:]:
            await asyncio.to_thread(engine.dispose)

    async def close(self) -> None:
        """Closes every connection, if open."""
        if self._direct is not None:
            direct, self._direct = self._direct, None
            await asyncio.to_thread(direct.close)
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()


class SQLiteDirect:
    """Lone statements on a SQLite file through Python's own sqlite3 driver, one thread hop
    each: reads on a small pool of read-only connections, single-statement writes on one
    thread and connection of their own (committed on return, ``synchronous = FULL`` as every
    connection).

    Through aiosqlite a lone statement took eight or more hops to its connection's thread
    (cursor, BEGIN, execute, fetch, close, commit or rollback), each a wake-up of another
    thread; under load, when the decode threads keep every core busy, an API key's check took
    10-15 ms of a request's time to first token, and the usage rows written as streams end
    delayed the requests starting beside them by as much again. A lone SELECT needs no
    transaction: it reads the last committed state (WAL), as it did. A write runs in the
    transaction the driver begins before a data-changing statement, committed after it: one
    statement, all or nothing."""

    def __init__(self, url: URL) -> None:
        url = url.set(drivername="sqlite")
        self.reads = sa.create_engine(url, hide_parameters=True)
        sa.event.listen(self.reads, "connect", lambda c, _: _sqlite_settings(c, writes=False))
        self.writes = sa.create_engine(url, hide_parameters=True, pool_size=1, max_overflow=0)
        sa.event.listen(self.writes, "connect", lambda c, _: _sqlite_settings(c, writes=True))
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write")

    async def read(self, statement: sa.Executable, rows: Callable[[sa.Result[Any]], _R]) -> _R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, statement, rows)

    def _read(self, statement: sa.Executable, rows: Callable[[sa.Result[Any]], _R]) -> _R:
        with self.reads.connect() as connection:
            return rows(connection.execute(statement))

    async def write(self, statement: sa.Executable) -> int:
        """Runs ``statement`` in a transaction of its own; the number of rows it changed."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write, statement)

    def _write(self, statement: sa.Executable) -> int:
        with self.writes.begin() as connection:
            return int(connection.execute(statement).rowcount)

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self.reads.dispose()
        self.writes.dispose()


def _sqlite_settings(dbapi_connection: Any, *, writes: bool) -> None:
    """What every connection to the SQLite file is set to: it waits up to 5 s for a lock; one
    that writes enforces foreign keys and syncs each commit (FULL: a committed row survives
    power loss too, not only a crash); one that only reads cannot write (``query_only``)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 5000")
    if writes:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
    else:
        cursor.execute("PRAGMA query_only = ON")
    cursor.close()
