"""The SQLite file: pragmas, versioned migrations, refusing a newer schema."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

import app.db
from app.db import SCHEMA_VERSION, Database, DatabaseUnavailable, SchemaTooNew


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
        "INSERT INTO users (username, password_hash, created_at, subject)"
        " VALUES ('kim', 'h', 0, 's')"
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
        "INSERT INTO users (username, password_hash, created_at, subject, email)"
        " VALUES ('a', 'h', 0, 's', 'e')"
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
    with pytest.raises(DatabaseUnavailable, match=f"schema {SCHEMA_VERSION + 1} failed"):
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


async def test_schema_2_upgrades_with_ids_never_reused_and_its_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:  # a database as the previous release left it
        conn.executescript(app.db.MIGRATIONS[0] + app.db.MIGRATIONS[1] + "PRAGMA user_version = 2;")
        conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('a', 'h', 0)")
        conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('b', 'h', 0)")
        conn.execute(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at)"
            " VALUES (2, 'k', 'sk-', 'hash', 0)"
        )
        conn.execute("INSERT INTO usage (user_id, day, requests) VALUES (2, '2026-01-01', 3)")
    db = Database(path)
    await db.open()
    try:
        rows = await db.fetch_all("SELECT id, username, subject FROM users ORDER BY id")
        assert [(r["id"], r["username"]) for r in rows] == [(1, "a"), (2, "b")]
        assert len({r["subject"] for r in rows}) == 2, "each account gets its own subject"
        # Rebuilding the users table must not cascade into the rows that reference it.
        assert (await db.fetch_one("SELECT COUNT(*) FROM api_keys"))[0] == 1  # type: ignore[index]
        assert (await db.fetch_one("SELECT requests FROM usage"))[0] == 3  # type: ignore[index]
        assert (await db.fetch_one("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
        await db.execute("DELETE FROM users WHERE id = 2")
        _, new_id = await db.execute(
            "INSERT INTO users (username, password_hash, created_at, subject)"
            " VALUES ('c', 'h', 0, 'c')"
        )
        assert new_id == 3, "a deleted account's id is never handed out again"
        assert (await db.fetch_one("SELECT COUNT(*) FROM api_keys"))[0] == 0  # type: ignore[index]
    finally:
        await db.close()


@pytest.mark.parametrize("damage", ["not a database", "a directory in the way"])
async def test_an_unusable_database_is_one_sentence(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "data" / "app.db"
    if damage == "not a database":
        path.parent.mkdir()
        path.write_bytes(b"this is not an SQLite file at all" * 100)
    else:
        (tmp_path / "data").write_text("a file where the data directory should be")
    with pytest.raises(DatabaseUnavailable) as caught:
        await Database(path).open()
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
