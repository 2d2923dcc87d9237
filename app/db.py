"""The SQLite database: one aiosqlite connection, pragmas, and versioned migrations.

The schema version lives in ``PRAGMA user_version``. Each migration runs in one transaction, so a
start interrupted mid-migration leaves the previous version intact. A database written by a newer
release is refused instead of being used with the wrong schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

logger = logging.getLogger(__name__)

# Append only: released migrations are never edited. Index + 1 is the schema version.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        -- Bumped when the password changes or the account is disabled: older tokens stop working.
        token_version INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER
    );
    CREATE INDEX api_keys_by_user ON api_keys (user_id);
    """,
    """
    -- Per-user limits set by an admin; NULL: the settings' default, 0: no limit.
    ALTER TABLE users ADD COLUMN requests_per_minute INTEGER;
    ALTER TABLE users ADD COLUMN tokens_per_day INTEGER;
    -- What each user used, per UTC day; one row updated in place per request.
    CREATE TABLE usage (
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        day TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, day)
    ) WITHOUT ROWID;
    CREATE INDEX usage_by_day ON usage (day);
    """,
    """
    -- Ids are never handed out twice (AUTOINCREMENT), and each account gets a random subject that
    -- its access tokens name: a token can only ever authenticate the account it was issued to.
    -- SQLite cannot add AUTOINCREMENT in place, so the table is rebuilt (foreign keys are off
    -- while migrations run, so the rows that reference users stay as they are).
    CREATE TABLE users_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        token_version INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        requests_per_minute INTEGER,
        tokens_per_day INTEGER,
        subject TEXT NOT NULL UNIQUE
    );
    INSERT INTO users_new (id, username, password_hash, is_admin, disabled, token_version,
        created_at, requests_per_minute, tokens_per_day, subject)
        SELECT id, username, password_hash, is_admin, disabled, token_version, created_at,
        requests_per_minute, tokens_per_day, lower(hex(randomblob(16))) FROM users;
    DROP TABLE users;
    ALTER TABLE users_new RENAME TO users;
    """,
    """
    -- Stored responses (/v1/responses), private to their user and deleted with them.
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        -- The response object as the API returns it (JSON).
        body TEXT NOT NULL,
        -- This request's input items, with their ids (JSON).
        input_items TEXT NOT NULL,
        -- The conversation a follow-up continues from: earlier turns, this input, this output
        -- (JSON chat messages, without the instructions).
        conversation TEXT NOT NULL
    );
    CREATE INDEX responses_by_user ON responses (user_id);
    CREATE INDEX responses_by_age ON responses (created_at);
    """,
    """
    -- Input tokens embedded (/v1/embeddings): part of the daily token limit with those generated.
    ALTER TABLE usage ADD COLUMN embedding_tokens INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was migrated by a newer release than this one."""


class DatabaseUnavailable(Exception):
    """The database file cannot be opened, written or read as a database."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        reason = getattr(cause, "strerror", None) or str(cause)
        super().__init__(
            f"cannot use the database {path}: {reason}; check that APP_DATA_DIR is a writable "
            "directory and that the file is an intact SQLite database (restore a backup if not)."
        )


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on ``path`` between processes, waited for off the event loop."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class Database:
    """One aiosqlite connection in autocommit mode: every statement commits on its own, and
    aiosqlite runs them one at a time on its own thread, off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Opens (creating if needed) the database file and brings its schema up to date.

        Raises ``DatabaseUnavailable`` with one sentence naming the file when it cannot be
        opened or is not a database, and ``SchemaTooNew`` for a newer release's database.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseUnavailable(self.path, exc) from None
        try:
            connection.row_factory = sqlite3.Row
            for pragma in (
                "PRAGMA journal_mode = WAL",
                "PRAGMA foreign_keys = ON",
                "PRAGMA busy_timeout = 5000",
                # FULL: a committed row survives power loss too, not only a crash.
                "PRAGMA synchronous = FULL",
            ):
                await connection.execute(pragma)
            self._connection = connection
            # Several processes may start on one data directory at once (replicas, a CLI
            # command beside the service): one migrates while the others wait, then find the
            # schema current.
            async with _file_lock(self.path.with_name(self.path.name + ".lock")):
                await self._migrate()
            os.chmod(self.path, 0o600)
        except BaseException as exc:
            self._connection = None
            await connection.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise DatabaseUnavailable(self.path, exc) from None
            raise

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: open (and migrated) while it runs."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise RuntimeError("the database is not open")
        return self._connection

    async def _migrate(self) -> None:
        row = await self.fetch_one("PRAGMA user_version")
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"The database was written by a newer release (schema {version}; this release "
                f"knows up to {SCHEMA_VERSION}). Upgrade llm-service, or restore a backup."
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            logger.info("migrating the database to schema %d", number)
            try:
                await self._apply(number, script)
            except sqlite3.Error as exc:
                raise sqlite3.Error(f"migrating it to schema {number} failed ({exc})") from exc

    async def _apply(self, number: int, script: str) -> None:
        # executescript commits first, so BEGIN..COMMIT makes each migration all-or-nothing.
        # Foreign keys are off meanwhile (SQLite ignores the pragma inside a transaction), so a
        # migration can rebuild a table without cascading deletes into the rows that reference
        # it.
        await self.connection.executescript(
            f"PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{script}\n"
            f"PRAGMA user_version = {number};\nCOMMIT;"
        )
        await self.connection.execute("PRAGMA foreign_keys = ON")

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query, or None."""
        async with self.connection.execute(sql, tuple(params)) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Every row of a query."""
        async with self.connection.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> tuple[int, int | None]:
        """Runs one statement, committed on return; returns (rows changed, last row id)."""
        async with self.connection.execute(sql, tuple(params)) as cursor:
            return cursor.rowcount, cursor.lastrowid

    async def close(self) -> None:
        """Closes the connection, if open."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
