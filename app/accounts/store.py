"""The accounts' SQL: users and API keys. Nothing else in the service writes these tables."""

from __future__ import annotations

import secrets
import sqlite3
import time

from app.accounts.schemas import ApiKeyView, User
from app.db import Database

_SELECT_USER = (
    "SELECT id, username, password_hash, is_admin, disabled, token_version, created_at,"
    " requests_per_minute, tokens_per_day, subject FROM users"
)


def _user(row: sqlite3.Row | None) -> User | None:
    if row is None:
        return None
    return User(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        is_admin=bool(row["is_admin"]),
        disabled=bool(row["disabled"]),
        token_version=row["token_version"],
        created_at=row["created_at"],
        requests_per_minute=row["requests_per_minute"],
        tokens_per_day=row["tokens_per_day"],
        subject=row["subject"],
    )


def _api_key(row: sqlite3.Row) -> ApiKeyView:
    return ApiKeyView(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


class UsernameTaken(Exception):
    """The username exists already (usernames are unique regardless of case)."""


class AccountStore:
    """Reads and writes accounts in the database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(self, username: str, password_hash: str, *, is_admin: bool) -> User:
        try:
            _, user_id = await self._db.execute(
                "INSERT INTO users (username, password_hash, is_admin, created_at, subject)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, password_hash, int(is_admin), int(time.time()), secrets.token_hex(16)),
            )
        except sqlite3.IntegrityError:
            raise UsernameTaken(username) from None
        user = await self.user_by_id(user_id or 0)
        assert user is not None
        return user

    async def user_by_id(self, user_id: int) -> User | None:
        return _user(await self._db.fetch_one(_SELECT_USER + " WHERE id = ?", (user_id,)))

    async def user_by_subject(self, subject: str) -> User | None:
        return _user(await self._db.fetch_one(_SELECT_USER + " WHERE subject = ?", (subject,)))

    async def user_by_name(self, username: str) -> User | None:
        return _user(await self._db.fetch_one(_SELECT_USER + " WHERE username = ?", (username,)))

    async def users(self) -> list[User]:
        rows = await self._db.fetch_all(_SELECT_USER + " ORDER BY id")
        return [user for row in rows if (user := _user(row)) is not None]

    async def has_admin(self) -> bool:
        return (
            await self._db.fetch_one("SELECT 1 FROM users WHERE is_admin = 1 LIMIT 1") is not None
        )

    async def set_password(self, user_id: int, password_hash: str, *, revoke_tokens: bool) -> None:
        """Stores a new hash; ``revoke_tokens`` ends every token issued before."""
        await self._db.execute(
            "UPDATE users SET password_hash = ?, token_version = token_version + ? WHERE id = ?",
            (password_hash, int(revoke_tokens), user_id),
        )

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        # Disabling also ends existing tokens, so re-enabling does not revive them.
        await self._db.execute(
            "UPDATE users SET disabled = ?, token_version = token_version + ? WHERE id = ?",
            (int(disabled), int(disabled), user_id),
        )

    async def set_admin(self, user_id: int, is_admin: bool) -> None:
        await self._db.execute(
            "UPDATE users SET is_admin = ? WHERE id = ?", (int(is_admin), user_id)
        )

    async def set_limits(self, user_id: int, limits: dict[str, int | None]) -> None:
        """Sets ``requests_per_minute`` and/or ``tokens_per_day`` (None: the default)."""
        if "requests_per_minute" in limits:
            await self._db.execute(
                "UPDATE users SET requests_per_minute = ? WHERE id = ?",
                (limits["requests_per_minute"], user_id),
            )
        if "tokens_per_day" in limits:
            await self._db.execute(
                "UPDATE users SET tokens_per_day = ? WHERE id = ?",
                (limits["tokens_per_day"], user_id),
            )

    async def delete_user(self, user_id: int) -> None:
        await self._db.execute("DELETE FROM users WHERE id = ?", (user_id,))

    async def create_api_key(
        self, user_id: int, name: str, prefix: str, key_hash: str
    ) -> ApiKeyView:
        _, key_id = await self._db.execute(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (user_id, name, prefix, key_hash, int(time.time())),
        )
        row = await self._db.fetch_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        assert row is not None
        return _api_key(row)

    async def api_keys(self, user_id: int) -> list[ApiKeyView]:
        rows = await self._db.fetch_all(
            "SELECT * FROM api_keys WHERE user_id = ? ORDER BY id", (user_id,)
        )
        return [_api_key(row) for row in rows]

    async def delete_api_key(self, user_id: int, key_id: int) -> bool:
        changed, _ = await self._db.execute(
            "DELETE FROM api_keys WHERE id = ? AND user_id = ?", (key_id, user_id)
        )
        return changed > 0

    async def user_by_api_key(self, key_hash: str) -> tuple[User, int, int | None] | None:
        """The key's owner, the key's id and when it was last used."""
        row = await self._db.fetch_one(
            "SELECT k.id AS key_id, k.last_used_at, u.id, u.username, u.password_hash,"
            " u.is_admin, u.disabled, u.token_version, u.created_at, u.requests_per_minute,"
            " u.tokens_per_day, u.subject FROM api_keys k JOIN users u ON u.id = k.user_id"
            " WHERE k.key_hash = ?",
            (key_hash,),
        )
        user = _user(row)
        if row is None or user is None:
            return None
        return user, row["key_id"], row["last_used_at"]

    async def touch_api_key(self, key_id: int, when: int) -> None:
        await self._db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id))
