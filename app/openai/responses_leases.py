"""Background responses across replicas, through the database they share.

A background response is generated in a task of the replica that created it. While it runs, its
row holds a lease (``lease_until``, by the database's clock) that the task renews every
``RENEW_SECONDS``; saving it finished clears the lease. So any replica can tell:

- a response whose replica stopped without finishing it (a crash, a kill): its lease ran out. It
  is reported, and stored, as failed, instead of ``in_progress`` for ever;
- where it is generated: asked to cancel a response generated elsewhere, a replica sets
  ``cancel_requested``, which the generating replica sees at its next renewal and obeys (the
  response is stored ``cancelled``), and waits for that to happen.

The generating replica's saves are written only while the row holds a lease
(``StoredResponse.write``): once another replica settled the response as lost, or a user
deleted it, nothing of it is written back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import msgspec

from app.errors import DatabaseDown
from app.openai.protocol_responses import ResponseError, ResponseObject
from app.openai.response_store import ResponseStore, StoredResponse

logger = logging.getLogger(__name__)

RENEW_SECONDS = 5.0
"""How often a replica renews the leases of the responses it generates (the lease itself lasts
``response_store.LEASE_SECONDS``)."""
POLL_SECONDS = 0.2
"""How often a replica that asked another to cancel a response looks whether it did."""

LOST = ResponseError(
    code="server_error",
    message="The server generating this response stopped before it finished; create it again.",
)


def running(body: ResponseObject) -> bool:
    """Whether a response saved now is a background one still being generated (its row holds a
    lease)."""
    return body.background and body.status in ("queued", "in_progress")


def cancel_once(task: asyncio.Task[None]) -> None:
    """Cancels a background response's task unless it is being cancelled already: a second
    cancel while it stores itself as cancelled would only interrupt the wait for that."""
    if not task.cancelling():
        task.cancel()


class Leases:
    """The leases of one replica's background responses, and what other replicas' say."""

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def keep(
        self, user_id: int, response_id: str, task: asyncio.Task[None], gone: Callable[[], None]
    ) -> None:
        """Renews the lease of the response ``task`` generates until it ends (cancel this);
        cancels ``task`` when another replica asked to or settled it as lost, or, calling
        ``gone`` first, when the response was deleted."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                kept = await self._store.renew(user_id, response_id)
            except Exception:  # a renewal missed is not a reason to stop; the next one may do
                logger.exception("cannot renew the lease of %s", response_id)
                continue
            if kept is None:
                gone()
            if not kept:
                cancel_once(task)
                return

    async def settled(self, user_id: int, stored: StoredResponse) -> StoredResponse | None:
        """``stored`` as it stands: a background response whose lease ran out is failed (its
        replica stopped), and stored so; None if it was deleted meanwhile. As it was read while
        that cannot be stored (the next read tries again). Not for one this replica generates."""
        if not stored.expired:
            return stored
        body = msgspec.json.decode(stored.body, type=ResponseObject)
        body.status, body.error = "failed", LOST
        lost = dataclasses.replace(
            stored, body=msgspec.json.encode(body), lease_until=None, expired=False
        )
        try:
            if await self._store.settle_lost(user_id, lost):
                return lost
        except DatabaseDown:
            return stored
        return await self._store.get(user_id, stored.id)  # renewed meanwhile, or deleted

    async def cancel_elsewhere(self, user_id: int, stored: StoredResponse) -> StoredResponse | None:
        """Asks the replica generating ``stored`` to cancel it, and waits until it has (two
        renewals at most; less if its lease runs out meanwhile); the response as it then is,
        None if it was deleted meanwhile."""
        await self._store.request_cancel(user_id, stored.id)
        deadline = time.monotonic() + 2 * RENEW_SECONDS + 1
        current: StoredResponse | None = stored
        while current is not None and current.lease_until is not None:
            if time.monotonic() >= deadline or current.expired:
                return await self.settled(user_id, current)
            await asyncio.sleep(POLL_SECONDS)
            current = await self._store.get(user_id, stored.id)
        return current
