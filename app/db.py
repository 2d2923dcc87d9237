"""The SQLite database: one aiosqlite connection, pragmas, and versioned migrations.

The schema version lives in ``PRAGMA user_version``. Each migration runs in one transaction, so a
start interrupted mid-migration leaves the previous version intact. A database written by a newer
release is refused instead of being used with the wrong schema.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
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
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was migrated by a newer release than this one."""


class Database:
    """One aiosqlite connection in autocommit mode: every statement commits on its own, and
    aiosqlite runs them one at a time on its own thread, off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Opens (creating if needed) the database file and brings its schema up to date."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = await aiosqlite.connect(self.path, isolation_level=None)
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
            await self._migrate()
        except BaseException:
            self._connection = None
            await connection.close()
            raise
        os.chmod(self.path, 0o600)

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
            # executescript commits first, so BEGIN..COMMIT makes each migration all-or-nothing.
            await self.connection.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

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
