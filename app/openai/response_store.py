"""Stored responses (``/v1/responses`` with ``store: true``), in the service's database.

Each row belongs to one user: every read, update and delete names the user, so another user's
id is simply not found. Rows older than the retention are deleted as new ones are written, and a
user's rows go with the user (a foreign key).

A response is saved after its answer was generated: where it cannot be written (a full disk, a
read-only or unreachable database), it is held in memory and served from there, written with the
next save, and the answer still reaches its client.

A background response being generated holds a lease on its row, by the database's clock, which
its replica renews (``renew``); other replicas ask it to cancel through the row
(``request_cancel``) and settle it as lost once the lease has run out (``settle_lost``). Its
saves after the first are written only while the row still holds a lease, so that the replica
generating it never writes back a response another settled or a user deleted
(``responses_leases`` uses all this).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from app.db import Database
from app.db.failures import FailedWrites
from app.db.tables import responses
from app.errors import DatabaseDown

LEASE_SECONDS = 30
"""How long a background response's lease lasts from its last write or renewal: several
renewals, so that a slow database does not lose one."""

logger = logging.getLogger(__name__)

# Old rows are looked for at most this often (seconds).
_PURGE_EVERY = 60.0
# Bytes of responses held in memory at most; beyond, the oldest are dropped (and logged).
_MAX_HELD_BYTES = 64 * 1024 * 1024
_WRITE_FAILED = (DatabaseDown, sa.exc.SQLAlchemyError, OSError)


Write = Literal["any", "leased", "leased_or_new"]
"""How a save is written: ``any``, inserted or over whatever is there; ``leased``, only over a
row that holds a lease (a background response's saves after its first: not once another replica
settled it as lost, nor once it was deleted); ``leased_or_new``, the same, or inserted where
there is no row (a later save standing in for a first one never written)."""


@dataclass(frozen=True)
class StoredResponse:
    """One stored response, its parts as JSON texts."""

    id: str
    body: bytes
    input_items: bytes
    conversation: bytes
    lease_until: int | None = None
    """As read: while a background response is generated, until when its replica answers for
    it (Unix time, the database's clock)."""
    expired: bool = False
    """As read: it has a lease, run out by the database's clock (its replica stopped)."""
    leased: bool = False
    """As written: a background response still being generated; the write gives it a lease of
    ``LEASE_SECONDS``."""
    write: Write = "any"
    """As written: how (``Write``)."""

    @property
    def size(self) -> int:
        return len(self.body) + len(self.input_items) + len(self.conversation)


class ResponseStore:
    """Reads and writes the ``responses`` table."""

    def __init__(
        self,
        db: Database,
        *,
        retention_days: int,
        on_write_failure: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._retention = retention_days * 86400
        self._purged = 0.0
        self._held: dict[str, tuple[int, StoredResponse, int]] = {}  # id: user, it, created_at
        self._held_bytes = 0
        self._writing = asyncio.Lock()  # one flush at a time, in the order of the saves
        self._failed_writes = FailedWrites(
            logger,
            "cannot write stored responses to the database (%s); %d are held in memory and "
            "written with the next one",
            on_failure=on_write_failure,
        )

    @property
    def held(self) -> int:
        """Responses waiting in memory to be written."""
        return len(self._held)

    async def save(self, user_id: int, stored: StoredResponse, *, created_at: int) -> None:
        """Writes (or rewrites) a response, committed on return if it can be.

        Never raises for a write that fails: the response is held in memory (``get`` finds it),
        written with the next save, and counted in ``llm_response_store_failures_total``.
        """
        self._hold((user_id, stored, created_at))
        await self.flush()

    async def flush(self) -> bool:
        """Writes the responses held in memory, oldest first; whether none is left."""
        async with self._writing:
            while self._held:
                response_id, entry = next(iter(self._held.items()))
                try:
                    if not await self._db.execute(self._write(*entry)):
                        logger.info("dropped a save of %s: settled or deleted", response_id)
                except sa.exc.IntegrityError:
                    logger.info("dropped a response of user %d, deleted meanwhile", entry[0])
                except _WRITE_FAILED as exc:
                    self._failed_writes(exc, len(self._held))
                    return False
                if self._held.get(response_id) is entry:  # not saved again meanwhile
                    self._release(response_id)
            try:
                await self._purge()
            except _WRITE_FAILED as exc:
                self._failed_writes(exc, len(self._held))
            return True

    def _hold(self, response: tuple[int, StoredResponse, int]) -> None:
        user_id, stored, created_at = response
        response_id = stored.id
        if response_id in self._held:  # the newest version goes last
            if stored.write == "leased" and self._held[response_id][1].write != "leased":
                # In place of a first save, not written (or not known to be).
                response = user_id, dataclasses.replace(stored, write="leased_or_new"), created_at
            self._release(response_id)
        self._held[response_id] = response
        self._held_bytes += response[1].size
        while self._held_bytes > _MAX_HELD_BYTES and len(self._held) > 1:
            dropped = next(iter(self._held))
            self._release(dropped)
            logger.error("dropped the stored response %s: too many wait to be written", dropped)

    def _release(self, response_id: str) -> None:
        _, stored, _ = self._held.pop(response_id)
        self._held_bytes -= stored.size

    def _write(self, user_id: int, stored: StoredResponse, created_at: int) -> sa.Executable:
        lease = self._db.unix_time() + LEASE_SECONDS if stored.leased else None
        if stored.write == "leased":
            return (
                sa.update(responses)
                .where(*_key(user_id, stored.id), responses.c.lease_until.is_not(None))
                .values(
                    body=stored.body.decode(),
                    conversation=stored.conversation.decode(),
                    lease_until=lease,
                )
            )
        insert = self._db.insert(responses).values(
            id=stored.id,
            user_id=user_id,
            created_at=created_at,
            body=stored.body.decode(),
            input_items=stored.input_items.decode(),
            conversation=stored.conversation.decode(),
            lease_until=lease,
        )
        # An id is only ever rewritten by its own user.
        overwrites = responses.c.user_id == insert.excluded.user_id
        if stored.write == "leased_or_new":
            overwrites &= responses.c.lease_until.is_not(None)
        return insert.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[responses.c.id],
            set_={
                "body": insert.excluded.body,
                "conversation": insert.excluded.conversation,
                "lease_until": insert.excluded.lease_until,
            },
            where=overwrites,
        )

    async def get(self, user_id: int, response_id: str) -> StoredResponse | None:
        """The user's response of this id, if there is one (and it is not past retention).

        A version held in memory is the newest, except a background response's later save,
        which is written only while the row holds its lease: once the row has none (another
        replica settled it, or it was finished), the row is what stands."""
        held = self._held.get(response_id)
        if held is not None and held[0] != user_id:
            held = None
        if held is not None and held[1].write == "any":
            return held[1]
        try:
            row = await self._db.fetch_one(
                sa.select(
                    responses,
                    (responses.c.lease_until < self._db.unix_time()).label("expired"),
                ).where(*_key(user_id, response_id), responses.c.created_at >= self._oldest())
            )
        except _WRITE_FAILED:
            if held is not None:
                return held[1]
            raise
        if held is not None and (row is None or row["lease_until"] is not None):
            return held[1]  # not written yet, or written over the lease it holds
        if row is None:
            return None
        return StoredResponse(
            row["id"],
            row["body"].encode(),
            row["input_items"].encode(),
            row["conversation"].encode(),
            lease_until=row["lease_until"],
            expired=bool(row["expired"]),
        )

    # --- background responses across replicas ----------------------------------------------

    async def renew(self, user_id: int, response_id: str) -> bool | None:
        """Extends the lease of a background response being generated here; False when another
        replica asked to cancel it or settled it as lost, None when it is gone (deleted), True
        otherwise (also when the database cannot be written: the generation goes on)."""
        if response_id in self._held and not await asyncio.shield(self.flush()):
            return True  # its row may not be written yet
        row = _key(user_id, response_id)
        try:
            changed = await self._db.execute(
                sa.update(responses)
                .where(*row, responses.c.lease_until.is_not(None), ~responses.c.cancel_requested)
                .values(lease_until=self._db.unix_time() + LEASE_SECONDS)
            )
            if changed:
                return True
            found = await self._db.fetch_one(sa.select(responses.c.id).where(*row))
        except _WRITE_FAILED as exc:
            logger.warning("cannot renew the lease of %s (%s)", response_id, exc)
            return True
        return False if found is not None else None

    async def request_cancel(self, user_id: int, response_id: str) -> None:
        """Asks the replica generating a background response to stop it; ``DatabaseDown`` if
        the request cannot be written."""
        try:
            await self._db.execute(
                sa.update(responses)
                .where(*_key(user_id, response_id), responses.c.lease_until.is_not(None))
                .values(cancel_requested=True)
            )
        except _WRITE_FAILED as exc:
            raise DatabaseDown() from exc

    async def settle_lost(self, user_id: int, stored: StoredResponse) -> bool:
        """Stores ``stored`` (the response as its lost generation leaves it) in place of a
        background response whose lease has run out; whether it did (not if its replica
        renewed the lease meanwhile); ``DatabaseDown`` if it cannot be written."""
        try:
            changed = await self._db.execute(
                sa.update(responses)
                .where(*_key(user_id, stored.id), responses.c.lease_until < self._db.unix_time())
                .values(body=stored.body.decode(), lease_until=None)
            )
        except _WRITE_FAILED as exc:
            raise DatabaseDown() from exc
        return changed > 0

    async def delete(self, user_id: int, response_id: str) -> bool:
        """Deletes the user's response of this id; whether there was one."""
        async with self._writing:  # not while a flush may write it again
            changed = await self._db.execute(
                sa.delete(responses).where(*_key(user_id, response_id))
            )
            held = self._held.get(response_id)
            if held is not None and held[0] == user_id:  # deleted: then forgotten here
                self._release(response_id)
        return changed > 0 or (held is not None and held[0] == user_id)

    def _oldest(self) -> int:
        return int(time.time()) - self._retention

    async def _purge(self) -> None:
        now = time.monotonic()
        if now - self._purged < _PURGE_EVERY:
            return
        self._purged = now
        await self._db.execute(sa.delete(responses).where(responses.c.created_at < self._oldest()))


def _key(user_id: int, response_id: str) -> tuple[sa.ColumnElement[bool], ...]:
    return responses.c.id == response_id, responses.c.user_id == user_id
