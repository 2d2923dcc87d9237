"""Stored responses (``/v1/responses`` with ``store: true``), in the service's database.

Each row belongs to one user: every read, update and delete names the user, so another user's
id is simply not found. Rows older than the retention are deleted as new ones are written, and a
user's rows go with the user (a foreign key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from app.db import Database
from app.db.tables import responses

# Old rows are looked for at most this often (seconds).
_PURGE_EVERY = 60.0


@dataclass(frozen=True)
class StoredResponse:
    """One stored response, its parts as JSON texts."""

    id: str
    body: bytes
    input_items: bytes
    conversation: bytes


class ResponseStore:
    """Reads and writes the ``responses`` table."""

    def __init__(self, db: Database, *, retention_days: int) -> None:
        self._db = db
        self._retention = retention_days * 86400
        self._purged = 0.0

    async def save(self, user_id: int, stored: StoredResponse, *, created_at: int) -> None:
        """Writes (or rewrites) a response, committed on return."""
        insert = self._db.insert(responses).values(
            id=stored.id,
            user_id=user_id,
            created_at=created_at,
            body=stored.body.decode(),
            input_items=stored.input_items.decode(),
            conversation=stored.conversation.decode(),
        )
        await self._db.execute(
            insert.on_conflict_do_update(
                index_elements=[responses.c.id],
                set_={"body": insert.excluded.body, "conversation": insert.excluded.conversation},
                # An id is only ever rewritten by its own user.
                where=responses.c.user_id == insert.excluded.user_id,
            )
        )
        await self._purge()

    async def get(self, user_id: int, response_id: str) -> StoredResponse | None:
        """The user's response of this id, if there is one (and it is not past retention)."""
        row = await self._db.fetch_one(
            sa.select(responses).where(
                responses.c.id == response_id,
                responses.c.user_id == user_id,
                responses.c.created_at >= self._oldest(),
            )
        )
        if row is None:
            return None
        return StoredResponse(
            row["id"],
            row["body"].encode(),
            row["input_items"].encode(),
            row["conversation"].encode(),
        )

    async def delete(self, user_id: int, response_id: str) -> bool:
        """Deletes the user's response of this id; whether there was one."""
        changed = await self._db.execute(
            sa.delete(responses).where(
                responses.c.id == response_id, responses.c.user_id == user_id
            )
        )
        return changed > 0

    def _oldest(self) -> int:
        return int(time.time()) - self._retention

    async def _purge(self) -> None:
        now = time.monotonic()
        if now - self._purged < _PURGE_EVERY:
            return
        self._purged = now
        await self._db.execute(sa.delete(responses).where(responses.c.created_at < self._oldest()))
