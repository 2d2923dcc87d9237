"""Databases from before Alembic: SQLite files versioned by ``PRAGMA user_version`` (1 to 5).

Such a file is brought to schema 5 here, the way those releases did it (each script in one
transaction, foreign keys off meanwhile), and Alembic then takes over from its baseline revision,
which is schema 5. A file Alembic manages carries ``ALEMBIC_MARK`` as its user_version, so that a
release from before Alembic refuses it as too new instead of misreading it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

logger = logging.getLogger(__name__)

# As released (never edited): index + 1 is the schema version each one brought a database to.
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
LAST_VERSION = len(MIGRATIONS)
ALEMBIC_MARK = 1000


class TooNew(Exception):
    """A user_version no release knows: the file was written by a newer one."""


def upgrade(path: Path) -> int:
    """Brings a pre-Alembic file to schema 5; its user_version (0: new, or managed by Alembic
    once it is ``ALEMBIC_MARK``). Raises ``TooNew``, or ``sqlite3.Error`` naming the step."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version in (0, ALEMBIC_MARK):
            return version
        if version > LAST_VERSION:
            raise TooNew(version)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            logger.info("migrating the database to schema %d", number)
            try:
                # executescript commits first, so BEGIN..COMMIT makes each script
                # all-or-nothing; foreign keys are off meanwhile (SQLite ignores the pragma
                # inside a transaction) so a rebuilt table does not cascade deletes.
                connection.executescript(
                    f"PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{script}\n"
                    f"PRAGMA user_version = {number};\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                raise sqlite3.Error(f"migrating it to schema {number} failed ({exc})") from exc
        return LAST_VERSION
    finally:
        connection.close()
