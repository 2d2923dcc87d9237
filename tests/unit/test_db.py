"""The database on both backends: migrations, refusing a newer schema, SQLite's safe settings
and the upgrade of files from before Alembic."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db import Database, DatabaseUnavailable, SchemaTooNew, legacy, migrate
from app.db.failures import FailedWrites
from app.db.tables import api_keys, usage, users
from tests.realservers import PostgresServer


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def new_user(name: str) -> sa.Insert:
    return sa.insert(users).values(username=name, password_hash="h", created_at=0, subject=name)


async def test_a_new_sqlite_database_gets_the_current_schema_and_safe_settings(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "data" / "app.db")
    await db.open()
    try:
        assert await db.scalar(sa.text("PRAGMA journal_mode")) == "wal"
        async with db.transaction() as writing:  # what transactions run with
            assert await writing.scalar(sa.text("PRAGMA foreign_keys")) == 1
            assert await writing.scalar(sa.text("PRAGMA synchronous")) == 2  # FULL
        # Lone writes (Database.execute) go through the direct writer: the same durability.
        assert db._direct is not None
        with db._direct.writes.connect() as direct:
            assert direct.scalar(sa.text("PRAGMA foreign_keys")) == 1
            assert direct.scalar(sa.text("PRAGMA synchronous")) == 2
        # Lone reads go through a connection of their own, which cannot write.
        assert await db.scalar(sa.text("PRAGMA query_only")) == 1
        assert await migrate.current(db) == migrate.head()
    finally:
        await db.close()
    assert db.path is not None
    # A release from before Alembic reads this as a newer schema and refuses it.
    assert user_version(db.path) == legacy.ALEMBIC_MARK
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.path.parent.stat().st_mode) == 0o700


async def test_reopening_keeps_the_data(database_url: str) -> None:
    db = Database(database_url)
    await db.open()
    await db.execute(new_user("kim"))
    await db.close()
    await db.open()
    try:
        assert await migrate.current(db) == migrate.head()
        assert await db.scalar(sa.select(users.c.id).where(users.c.username == "kim")) == 1
    finally:
        await db.close()


async def test_ids_are_never_reused_and_deletes_cascade(database_url: str) -> None:
    db = Database(database_url)
    await db.open()
    try:
        for name in ("a", "b"):
            await db.execute(new_user(name))
        await db.execute(
            sa.insert(api_keys).values(
                user_id=2, name="k", prefix="sk-", key_hash="hash", created_at=0
            )
        )
        await db.execute(sa.insert(usage).values(user_id=2, day="2026-01-01", requests=3))
        await db.execute(sa.delete(users).where(users.c.id == 2))
        row = await db.execute_returning(new_user("c").returning(users.c.id))
        assert row["id"] == 3, "a deleted account's id is never handed out again"
        assert await db.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 0
        assert await db.scalar(sa.select(sa.func.count()).select_from(usage)) == 0
        with pytest.raises(sa.exc.IntegrityError):  # unique regardless of case
            await db.execute(new_user("A").values(subject="other"))
    finally:
        await db.close()


async def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    replicas = [Database(database_url) for _ in range(4)]
    await asyncio.gather(*(db.open() for db in replicas))
    try:
        for db in replicas:
            assert await migrate.current(db) == migrate.head()
    finally:
        await asyncio.gather(*(db.close() for db in replicas))


def scripts_with(tmp_path: Path, migration: str) -> Path:
    """A copy of the migrations with one more revision after the head."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head()
    (scripts / "versions" / "9999_next.py").write_text(
        f'"""The next release."""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "9999"\ndown_revision = "{head}"\nbranch_labels = None\n'
        f"depends_on = None\n\n\ndef upgrade() -> None:\n{migration}\n"
    )
    return scripts


async def test_a_newer_release_migrates_an_older_database(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(database_url)
    await db.open()
    await db.close()
    scripts = scripts_with(tmp_path, '    op.add_column("users", sa.Column("email", sa.Text))')
    monkeypatch.setattr(migrate, "SCRIPTS", scripts)
    await db.open()
    try:
        assert await migrate.current(db) == "9999"
        await db.execute(sa.text("UPDATE users SET email = 'e'"))
    finally:
        await db.close()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
async def test_a_migration_that_rebuilds_users_keeps_the_rows_that_reference_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "app.db")
    await db.open()
    await db.execute(new_user("a"))
    await db.execute(
        sa.insert(api_keys).values(user_id=1, name="k", prefix="sk-", key_hash="h", created_at=0)
    )
    await db.close()
    # SQLite alters a table by copying it: the old one is dropped, which must not cascade.
    scripts = scripts_with(
        tmp_path,
        '    with op.batch_alter_table("users", recreate="always") as batch:\n'
        '        batch.add_column(sa.Column("email", sa.Text))\n'
        # Batch mode cannot copy an index on an expression: a rebuild makes it again.
        '    op.create_index("users_by_lower_username", "users", [sa.text("lower(username)")],'
        " unique=True)",
    )
    monkeypatch.setattr(migrate, "SCRIPTS", scripts)
    await db.open()
    try:
        assert await db.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 1
        async with db.transaction() as writing:  # on again afterwards
            assert await writing.scalar(sa.text("PRAGMA foreign_keys")) == 1
        with pytest.raises(sa.exc.IntegrityError):  # still unique regardless of case
            await db.execute(new_user("A").values(subject="other"))
    finally:
        await db.close()


async def test_a_failing_migration_leaves_the_previous_schema_intact(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(database_url)
    await db.open()
    await db.close()
    before = migrate.head()
    scripts = scripts_with(
        tmp_path,
        '    op.create_table("extra", sa.Column("x", sa.Integer))\n'
        '    op.create_table("users", sa.Column("x", sa.Integer))',
    )
    monkeypatch.setattr(migrate, "SCRIPTS", scripts)
    with pytest.raises(DatabaseUnavailable, match="users"):
        await db.open()
    monkeypatch.undo()
    await db.open()
    try:
        assert await migrate.current(db) == before
        tables = await db.engine.connect()
        try:
            names = await tables.run_sync(lambda c: sa.inspect(c).get_table_names())
        finally:
            await tables.close()
        assert "extra" not in names
    finally:
        await db.close()


async def test_an_older_release_refuses_a_newer_database(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(database_url)
    monkeypatch.setattr(migrate, "SCRIPTS", scripts_with(tmp_path, "    pass"))
    await db.open()
    await db.close()
    monkeypatch.undo()
    with pytest.raises(SchemaTooNew) as caught:
        await db.open()
    message = str(caught.value)
    assert "schema 9999" in message
    assert f"knows up to {migrate.head()}" in message
    with pytest.raises(RuntimeError):
        await db.fetch_one(sa.select(1))


def pre_alembic_file(path: Path, version: int) -> None:
    """A database as a release before Alembic left it at ``version``."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "".join(legacy.MIGRATIONS[:version]) + f"PRAGMA user_version = {version};"
        )


async def test_a_schema_2_file_upgrades_with_ids_never_reused_and_its_rows_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    pre_alembic_file(path, 2)
    with sqlite3.connect(path) as conn:
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
        assert await migrate.current(db) == migrate.head()
        rows = await db.fetch_all(sa.select(users).order_by(users.c.id))
        assert [(r["id"], r["username"]) for r in rows] == [(1, "a"), (2, "b")]
        assert len({r["subject"] for r in rows}) == 2, "each account gets its own subject"
        # Rebuilding the users table must not cascade into the rows that reference it.
        assert await db.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 1
        assert await db.scalar(sa.select(usage.c.requests)) == 3
        async with db.transaction() as writing:
            assert await writing.scalar(sa.text("PRAGMA foreign_keys")) == 1
        await db.execute(sa.delete(users).where(users.c.id == 2))
        row = await db.execute_returning(new_user("c").returning(users.c.id))
        assert row["id"] == 3, "a deleted account's id is never handed out again"
        assert await db.scalar(sa.select(sa.func.count()).select_from(api_keys)) == 0
        with pytest.raises(sa.exc.IntegrityError):  # still unique regardless of case
            await db.execute(new_user("A").values(subject="other"))
    finally:
        await db.close()
    assert user_version(path) == legacy.ALEMBIC_MARK


async def test_a_file_with_an_unknown_user_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    pre_alembic_file(path, legacy.LAST_VERSION)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew, match="user_version 99"):
        await Database(path).open()


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


async def test_a_server_that_comes_up_late_is_waited_for(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = postgres_server.create_database()
    # Connections are refused until the server "comes up", as while a container starts.
    postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    db = Database(postgres_server.url(name), connect_wait=30)
    opening = asyncio.create_task(db.open())
    async with asyncio.timeout(30):
        while "waiting for the database" not in caplog.text:  # noqa: ASYNC110 - a log line
            await asyncio.sleep(0.1)
    postgres_server.psql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await opening
    try:
        assert await migrate.current(db) == migrate.head()
    finally:
        await db.close()
        postgres_server.drop_database(name)


async def test_a_wrong_password_is_not_waited_for(postgres_server: PostgresServer) -> None:
    url = postgres_server.url().replace(":postgres@", ":wrong-password@")
    with pytest.raises(DatabaseUnavailable, match="password"):
        await Database(url, connect_wait=600).open()


async def test_an_unreachable_server_is_one_sentence() -> None:
    db = Database("postgresql+asyncpg://app:secret-password@127.0.0.1:9/app", connect_wait=0)
    with pytest.raises(DatabaseUnavailable) as caught:
        await db.open()
    message = str(caught.value)
    assert "postgresql://app:***@127.0.0.1:9/app" in message
    assert "secret-password" not in message
    assert "\n" not in message


def test_failed_writes_are_counted_each_time_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[int] = []
    failures = FailedWrites(
        logging.getLogger("test.failures"),
        "cannot write (%s); %d held",
        on_failure=lambda: counted.append(1),
    )
    with caplog.at_level(logging.ERROR, logger="test.failures"):
        for held in (1, 2, 3):
            failures(OSError("disk full"), held)
    assert len(counted) == 3
    assert [r.getMessage() for r in caplog.records] == ["cannot write (disk full); 1 held"]
