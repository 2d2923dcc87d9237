"""The SQLite file: pragmas, versioned migrations, refusing a newer schema."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

import app.db
from app.db import SCHEMA_VERSION, Database, SchemaTooNew


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_a_new_database_gets_the_current_schema_and_safe_settings(tmp_path: Path) -> None:
    db = Database(tmp_path / "data" / "app.db")
    await db.open()
    try:
        assert (await db.fetch_one("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA synchronous"))[0] == 2  # type: ignore[index]  # FULL
    finally:
        await db.close()
    assert user_version(db.path) == SCHEMA_VERSION
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.path.parent.stat().st_mode) == 0o700


async def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    db = Database(tmp_path / "app.db")
    await db.open()
    await db.execute(
        "INSERT INTO users (username, password_hash, created_at) VALUES ('kim', 'h', 0)"
    )
    await db.close()
    await db.open()
    assert await db.fetch_one("SELECT 1 FROM users WHERE username = 'kim'") is not None
    await db.close()


async def test_a_newer_release_migrates_an_older_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "app.db")
    await db.open()
    await db.close()
    upgraded = (*app.db.MIGRATIONS, "ALTER TABLE users ADD COLUMN email TEXT;")
    monkeypatch.setattr(app.db, "MIGRATIONS", upgraded)
    monkeypatch.setattr(app.db, "SCHEMA_VERSION", len(upgraded))
    await db.open()
    await db.execute(
        "INSERT INTO users (username, password_hash, created_at, email) VALUES ('a', 'h', 0, 'e')"
    )
    await db.close()
    assert user_version(db.path) == SCHEMA_VERSION + 1


async def test_a_failing_migration_leaves_the_previous_schema_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "app.db")
    await db.open()
    await db.close()
    broken = (*app.db.MIGRATIONS, "CREATE TABLE extra (x); CREATE TABLE users (x);")
    monkeypatch.setattr(app.db, "MIGRATIONS", broken)
    monkeypatch.setattr(app.db, "SCHEMA_VERSION", len(broken))
    with pytest.raises(sqlite3.OperationalError):
        await db.open()
    assert user_version(db.path) == SCHEMA_VERSION
    with sqlite3.connect(db.path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "extra" not in tables


async def test_an_older_release_refuses_a_newer_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "app.db")
    await db.open()
    await db.close()
    with sqlite3.connect(db.path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    with pytest.raises(SchemaTooNew) as caught:
        await db.open()
    message = str(caught.value)
    assert f"schema {SCHEMA_VERSION + 3}" in message
    assert f"knows up to {SCHEMA_VERSION}" in message
    with pytest.raises(RuntimeError):
        await db.fetch_one("SELECT 1")
