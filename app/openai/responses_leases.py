"""Background responses across replicas, through the database they share.

A background response is generated in a task of the replica that created it. While it runs, its
row holds a lease (``lease_until``) that the task renews every ``RENEW_SECONDS``; saving it
finished clears the lease. So any replica can tell:

- a response whose replica stopped without finishing it (a crash, a kill): its lease ran out. It
  is reported, and stored, as failed, instead of ``in_progress`` for ever;
- where it is generated: asked to cancel a response generated elsewhere, a replica sets
  ``cancel_requested``, which the generating replica sees at its next renewal and obeys (the
  response is stored ``cancelled``), and waits for that to happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import msgspec

from app.openai.protocol_responses import ResponseError, ResponseObject
from app.openai.response_store import ResponseStore, StoredResponse

RENEW_SECONDS = 5.0
"""How often a replica renews the leases of the responses it generates."""
LEASE_SECONDS = 30
"""How long a lease lasts: several renewals, so that a slow database does not lose one."""
POLL_SECONDS = 0.2
"""How often a replica that asked another to cancel a response looks whether it did."""

LOST = ResponseError(
    code="server_error",
    message="The server generating this response stopped before it finished; create it again.",
)

_RUNNING = ("queued", "in_progress")


def lease_until(body: ResponseObject) -> int | None:
    """The lease a response saved now holds: only a background one still being generated."""
    if body.background and body.status in _RUNNING:
        return int(time.time()) + LEASE_SECONDS
    return None


class Leases:
    """The leases of one replica's background responses, and what other replicas' say."""

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def keep(
        self, user_id: int, response_id: str, task: asyncio.Task[None], gone: Callable[[], None]
    ) -> None:
        """Renews the lease of the response ``task`` generates until it ends (cancel this);
        cancels ``task`` when another replica asked to, or, calling ``gone`` first, when the
        response was deleted."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            kept = await self._store.renew(user_id, response_id, int(time.time()) + LEASE_SECONDS)
            if kept is None:
                gone()
            if not kept:
                task.cancel()
                return

    async def settled(self, user_id: int, stored: StoredResponse) -> StoredResponse:
        """``stored`` as it stands: a background response whose lease ran out is failed (its
        replica stopped), and stored so. Not for one this replica generates."""
        now = int(time.time())
        if stored.lease_until is None or stored.lease_until >= now:
            return stored
        body = msgspec.json.decode(stored.body, type=ResponseObject)
        body.status, body.error = "failed", LOST
        lost = dataclasses.replace(stored, body=msgspec.json.encode(body), lease_until=None)
        if await self._store.settle_lost(user_id, lost, now):
            return lost
        # Renewed meanwhile (its replica was only slow), or deleted.
        return await self._store.get(user_id, stored.id) or lost

    async def cancel_elsewhere(self, user_id: int, stored: StoredResponse) -> StoredResponse:
        """Asks the replica generating ``stored`` to cancel it, and waits until it has (two
        renewals at most); the response as it then is."""
        await self._store.request_cancel(user_id, stored.id)
        deadline = time.monotonic() + 2 * RENEW_SECONDS + 1
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            now = await self._store.get(user_id, stored.id)
            if now is None or now.lease_until is None:
                return now or stored
            stored = now
        return await self.settled(user_id, stored)
