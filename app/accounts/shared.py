"""Counters that several replicas of the service share, in Valkey or Redis (``APP_REDIS_URL``).

Requests per minute and the login throttle keep their moving windows in the ``limits`` package's
Redis storage; requests in progress per user are leases in a sorted set (one member per request,
scored by when it lapses), taken and counted atomically by a Lua script, renewed while the request
runs, so a replica that dies holding some gives them back when they lapse. Without a URL
everything stays in this process's memory, as on a single machine.

An unreachable store fails closed: the limited routes answer 503 (``LimitsUnavailable``) and the
log says why, rather than letting requests past limits nobody can count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.errors import StorageError
from redis.exceptions import RedisError

from app.errors import LimitsUnavailable

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
"""How long a request's hold on one of its user's slots lasts unless renewed."""

_ACQUIRE = """
local key, now, lapses, id, cap = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3],
    tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < cap then
    redis.call('ZADD', key, lapses, id)
    redis.call('PEXPIRE', key, math.ceil((lapses - now) * 1000))
    return 1
end
return 0
"""


class SharedState:
    """The limits' storage and the slot leases: in Valkey/Redis when ``url`` is given."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.storage: Storage
        self.slots: SharedSlots | None
        if url is None:
            self.storage = MemoryStorage()
            self.slots = None
        else:
            self.storage = RedisStorage(
                f"async+{url}", implementation="redispy", wrap_exceptions=True
            )
            self.slots = SharedSlots(
                aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            )

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: checks the store answers (a log line if not), closes it at
        the end."""
        if self.slots is not None:
            try:
                await self.slots.ping()
                logger.info("limits are shared through %s", _safe(self.url))
            except LimitsUnavailable:
                logger.error(
                    "the limits store %s does not answer; limited routes answer 503 until it does",
                    _safe(self.url),
                )
        try:
            yield
        finally:
            if self.slots is not None:
                await self.slots.close()


class SharedSlots:
    """Requests in progress per user, counted across replicas."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)

    async def ping(self) -> None:
        async with unavailable_as_503():
            await self._client.ping()

    async def try_take(self, user_id: int, cap: int, lease: str) -> bool:
        """Takes one of the user's ``cap`` slots for ``lease`` if one is free."""
        now = time.time()
        async with unavailable_as_503():
            taken = await self._acquire(
                keys=[_key(user_id)], args=[now, now + LEASE_SECONDS, lease, cap]
            )
        return bool(taken)

    async def renew(self, user_id: int, lease: str) -> None:
        async with unavailable_as_503():
            await self._client.zadd(_key(user_id), {lease: time.time() + LEASE_SECONDS}, xx=True)

    async def give_back(self, user_id: int, lease: str) -> None:
        async with unavailable_as_503():
            await self._client.zrem(_key(user_id), lease)

    async def close(self) -> None:
        await self._client.aclose()


@contextlib.asynccontextmanager
async def unavailable_as_503() -> AsyncIterator[None]:
    """Turns the store's failures into a 503 (and a log line)."""
    try:
        yield
    except (StorageError, RedisError, OSError) as exc:
        _log_failure(exc)
        raise LimitsUnavailable() from None


_last_log = 0.0


def _log_failure(exc: BaseException) -> None:
    global _last_log
    now = time.monotonic()
    if now - _last_log >= 60:
        _last_log = now
        logger.error("the limits store failed (%s); limited routes answer 503", _describe(exc))


def _describe(exc: BaseException) -> str:
    inner: Any = getattr(exc, "storage_error", None)
    return f"{type(inner or exc).__name__}: {inner or exc}"


def _key(user_id: int) -> str:
    return f"llm-service:slots:{user_id}"


def _safe(url: str | None) -> str:
    """The URL without its password, for the log."""
    if url is None or "@" not in url:
        return str(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


async def renewing(slots: SharedSlots, user_id: int, lease: str) -> None:
    """Renews a lease until cancelled (a request that runs longer than a lease)."""
    while True:
        await asyncio.sleep(LEASE_SECONDS / 3)
        with contextlib.suppress(LimitsUnavailable):
            await slots.renew(user_id, lease)
