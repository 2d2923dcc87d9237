"""Bringing a database's schema up to date with Alembic, one process at a time.

Every replica (and ``python -m app db upgrade``) may do this at start: a lock held for the whole
upgrade (PostgreSQL: an advisory lock; SQLite: a lock file beside the database) makes one process
migrate while the others wait and then find the schema current. All of one upgrade runs in one
transaction, so an interrupted start leaves the previous schema intact. A database migrated by a
newer release is refused instead of being used with the wrong schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db import legacy
from app.db.database import Database, SchemaTooNew

logger = logging.getLogger(__name__)
# Alembic reports every plugin and context at INFO; the line above each upgrade is enough.
logging.getLogger("alembic").setLevel(logging.WARNING)

SCRIPTS = Path(__file__).parent / "migrations"
# The revision whose schema is the last pre-Alembic release's (user_version 5).
BASELINE = "0001"
# pg_advisory_lock's key for migrations: any constant the service uses for nothing else.
_PG_LOCK = 0x6C6C_6D5F_6462  # "llm_db"


class LegacyError(Exception):
    """Upgrading a pre-Alembic SQLite file failed (the cause says how)."""


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this release knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def _current(connection: sa.Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


def _too_new(current: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"The database was written by a newer release (schema {current}; this release knows "
        f"up to {head()}). Upgrade llm-service, or restore a backup."
    )


def _upgrade(connection: sa.Connection) -> None:
    config = _config(connection)
    script = ScriptDirectory.from_config(config)
    current = _current(connection)
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise _too_new(current)
    if current is None and connection.dialect.name == "sqlite":
        version = connection.exec_driver_sql("PRAGMA user_version").scalar()
        if version == legacy.LAST_VERSION:  # a pre-Alembic file at its last schema
            command.stamp(config, BASELINE)
            # Those releases made usernames unique with COLLATE NOCASE; lookups now use this.
            connection.exec_driver_sql(
                "CREATE UNIQUE INDEX IF NOT EXISTS users_by_lower_username"
                " ON users (lower(username))"
            )
    if current != head():
        logger.info("migrating the database from %s to %s", current or "nothing", head())
    command.upgrade(config, "head")
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"PRAGMA user_version = {legacy.ALEMBIC_MARK}")


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on ``path`` between processes, waited for off the event loop."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.asynccontextmanager
async def _file_lock_for(db: Database) -> AsyncIterator[None]:
    """SQLite: the lock file beside the database, taken before the first connection (which may
    switch the file to WAL, which no other connection may do at the same time)."""
    path = db.path
    if path is None:
        yield
        return
    async with _file_lock(path.with_name(path.name + ".lock")):
        yield


@contextlib.asynccontextmanager
async def _advisory_lock(connection: AsyncConnection) -> AsyncIterator[None]:
    """PostgreSQL: a session-level advisory lock on the migrating connection."""
    if connection.dialect.name != "postgresql":
        yield
        return
    await connection.execute(sa.select(sa.func.pg_advisory_lock(_PG_LOCK)))
    await connection.commit()
    try:
        yield
    finally:
        await connection.rollback()
        await connection.execute(sa.select(sa.func.pg_advisory_unlock(_PG_LOCK)))
        await connection.commit()


@contextlib.asynccontextmanager
async def _foreign_keys_off(connection: AsyncConnection) -> AsyncIterator[None]:
    """SQLite: foreign keys off while migrating (the pragma is ignored inside a transaction, so
    it is set before the first statement). A table is altered by copying it and dropping the
    old one, which must not cascade into the rows that reference it; the keys are checked
    before the migration commits instead."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    await raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        await raw.execute("PRAGMA foreign_keys = ON")


def _check_foreign_keys(connection: sa.Connection) -> None:
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise sa.exc.IntegrityError("PRAGMA foreign_key_check", None, Exception(broken[:3]))


async def upgrade(db: Database) -> None:
    """Migrates ``db`` (open) to this release's schema; see the module's docstring."""
    async with (
        _file_lock_for(db),
        db.engine.connect() as connection,
        _advisory_lock(connection),
    ):
        await connection.execution_options(sqlite_begin="IMMEDIATE")
        if db.path is not None:
            try:
                await asyncio.to_thread(legacy.upgrade, db.path)
            except legacy.TooNew as exc:
                raise _too_new(f"user_version {exc.args[0]}") from None
            except Exception as exc:
                raise LegacyError(str(exc)) from exc
        async with _foreign_keys_off(connection):
            await connection.run_sync(_upgrade)
            await connection.run_sync(_check_foreign_keys)
            await connection.commit()


async def current(db: Database) -> str | None:
    """The database's revision (None: nothing migrated yet)."""
    async with db.engine.connect() as connection:
        return await connection.run_sync(_current)
