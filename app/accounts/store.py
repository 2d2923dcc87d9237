"""The accounts' SQL: users and API keys. Nothing else in the service writes these tables."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from app.accounts.schemas import ApiKeyView, User
from app.db import Database
from app.db.failures import FailedWrites
from app.db.tables import api_keys, users
from app.errors import DatabaseDown

logger = logging.getLogger(__name__)


_SELECT_USER = sa.select(users)


def _user(row: RowMapping | None) -> User | None:
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


async def _another_admin(connection: AsyncConnection, user_id: int) -> None:
    """Raises ``LastAdmin`` unless an enabled admin other than ``user_id`` exists. On
    PostgreSQL the enabled admins' rows are locked, in id order (no deadlock), until the
    transaction ends; SQLite's exclusive transaction runs alone anyway."""
    admins = (
        sa.select(users.c.id)
        .where(users.c.is_admin.is_(True), users.c.disabled.is_(False))
        .order_by(users.c.id)
    )
    if connection.dialect.name == "postgresql":
        admins = admins.with_for_update()
    ids = (await connection.execute(admins)).scalars().all()
    if not any(other != user_id for other in ids):
        raise LastAdmin(user_id)


def _api_key(row: RowMapping) -> ApiKeyView:
    return ApiKeyView(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


class UsernameTaken(Exception):
    """The username exists already (usernames are unique regardless of case)."""


class LastAdmin(Exception):
    """The change would leave no enabled admin."""


class AccountStore:
    """Reads and writes accounts in the database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._failed_touches = FailedWrites(
            logger, "cannot record when API keys were last used: %s", level=logging.WARNING
        )

    async def create_user(self, username: str, password_hash: str, *, is_admin: bool) -> User:
        statement = (
            sa.insert(users)
            .values(
                username=username,
                password_hash=password_hash,
                is_admin=is_admin,
                created_at=int(time.time()),
                subject=secrets.token_hex(16),
            )
            .returning(*users.c)
        )
        try:
            row = await self._db.execute_returning(statement)
        except sa.exc.IntegrityError:
            raise UsernameTaken(username) from None
        user = _user(row)
        assert user is not None
        return user

    async def user_by_id(self, user_id: int) -> User | None:
        return _user(await self._db.fetch_one(_SELECT_USER.where(users.c.id == user_id)))

    async def user_by_subject(self, subject: str) -> User | None:
        return _user(await self._db.fetch_one(_SELECT_USER.where(users.c.subject == subject)))

    async def user_by_name(self, username: str) -> User | None:
        # Usernames are ASCII, so lower() agrees on every backend.
        statement = _SELECT_USER.where(sa.func.lower(users.c.username) == username.lower())
        return _user(await self._db.fetch_one(statement))

    async def users(self) -> list[User]:
        rows = await self._db.fetch_all(_SELECT_USER.order_by(users.c.id))
        return [user for row in rows if (user := _user(row)) is not None]

    async def has_admin(self) -> bool:
        statement = sa.select(users.c.id).where(users.c.is_admin.is_(True)).limit(1)
        return await self._db.scalar(statement) is not None

    async def _update(self, user_id: int, **values: Any) -> None:
        await self._db.execute(sa.update(users).where(users.c.id == user_id).values(**values))

    async def set_password(self, user_id: int, password_hash: str, *, revoke_tokens: bool) -> None:
        """Stores a new hash; ``revoke_tokens`` ends every token issued before."""
        await self._update(
            user_id,
            password_hash=password_hash,
            token_version=users.c.token_version + int(revoke_tokens),
        )

    async def delete_user(self, user_id: int, *, keep_an_admin: bool = False) -> None:
        """Deletes the account (its keys, usage and responses go with it). ``keep_an_admin``:
        raises ``LastAdmin`` instead if no other enabled admin would be left."""
        async with self._db.transaction(exclusive=True) as connection:
            if keep_an_admin:
                await _another_admin(connection, user_id)
            await connection.execute(sa.delete(users).where(users.c.id == user_id))

    async def update_user(
        self,
        user_id: int,
        *,
        password_hash: str | None = None,
        disabled: bool | None = None,
        is_admin: bool | None = None,
        limits: dict[str, int | None] | None = None,
        keep_an_admin: bool = False,
    ) -> None:
        """An admin's change to an account, all of it in one transaction. A new password or
        disabling ends the account's tokens. ``keep_an_admin``: raises ``LastAdmin`` instead if
        no other enabled admin would be left (checked with the admins locked, so two admins
        demoting each other at once on two replicas cannot both succeed)."""
        values: dict[str, Any] = dict(limits or {})
        if password_hash is not None:
            values["password_hash"] = password_hash
        if disabled is not None:
            values["disabled"] = disabled
        if is_admin is not None:
            values["is_admin"] = is_admin
        if password_hash is not None or disabled:
            values["token_version"] = users.c.token_version + 1
        async with self._db.transaction(exclusive=True) as connection:
            if keep_an_admin:
                await _another_admin(connection, user_id)
            if values:
                await connection.execute(
                    sa.update(users).where(users.c.id == user_id).values(**values)
                )

    async def create_api_key(
        self, user_id: int, name: str, prefix: str, key_hash: str
    ) -> ApiKeyView:
        row = await self._db.execute_returning(
            sa.insert(api_keys)
            .values(
                user_id=user_id,
                name=name,
                prefix=prefix,
                key_hash=key_hash,
                created_at=int(time.time()),
            )
            .returning(*api_keys.c)
        )
        return _api_key(row)

    async def api_keys(self, user_id: int) -> list[ApiKeyView]:
        rows = await self._db.fetch_all(
            sa.select(api_keys).where(api_keys.c.user_id == user_id).order_by(api_keys.c.id)
        )
        return [_api_key(row) for row in rows]

    async def delete_api_key(self, user_id: int, key_id: int) -> bool:
        changed = await self._db.execute(
            sa.delete(api_keys).where(api_keys.c.id == key_id, api_keys.c.user_id == user_id)
        )
        return changed > 0

    async def user_by_api_key(self, key_hash: str) -> tuple[User, int, int | None] | None:
        """The key's owner, the key's id and when it was last used."""
        row = await self._db.fetch_one(
            sa.select(
                users,
                api_keys.c.id.label("key_id"),
                api_keys.c.last_used_at,
            )
            .join_from(api_keys, users, users.c.id == api_keys.c.user_id)
            .where(api_keys.c.key_hash == key_hash)
        )
        user = _user(row)
        if row is None or user is None:
            return None
        return user, row["key_id"], row["last_used_at"]

    async def touch_api_key(self, key_id: int, when: int) -> None:
        """Records when a key was last used, if it can: on a full disk or a read-only database
        the request it came with goes on, and the next one tries again."""
        try:
            await self._db.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when)
            )
        except (DatabaseDown, sa.exc.SQLAlchemyError, OSError) as exc:
            self._failed_touches(exc)  # the next request tries again
