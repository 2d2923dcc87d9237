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

# The store's own clock decides when leases lapse, so replicas' clocks may differ.
_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
"""
_ACQUIRE = (
    _NOW
    + """
local key, id, cap, lease = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZCARD', key) < cap then
    redis.call('ZADD', key, now + lease, id)
    redis.call('PEXPIRE', key, math.ceil(lease * 1000))
    return 1
end
return 0
"""
)
_RENEW = (
    _NOW
    + """
local key, id, lease = KEYS[1], ARGV[1], tonumber(ARGV[2])
if not redis.call('ZSCORE', key, id) then
    return 0
end
redis.call('ZADD', key, now + lease, id)
redis.call('PEXPIRE', key, math.ceil(lease * 1000))
return 1
"""
)


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
            # Valkey speaks Redis's protocol: one client library for both.
            redis_url = _as_redis(url)
            self.storage = RedisStorage(
                f"async+{redis_url}", implementation="redispy", wrap_exceptions=True
            )
            self.slots = SharedSlots(
                aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
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
        self._renew = client.register_script(_RENEW)

    async def ping(self) -> None:
        async with unavailable_as_503():
            await self._client.ping()

    async def try_take(self, user_id: int, cap: int, lease: str) -> bool:
        """Takes one of the user's ``cap`` slots for ``lease`` if one is free."""
        async with unavailable_as_503():
            taken = await self._acquire(keys=[_key(user_id)], args=[lease, cap, LEASE_SECONDS])
        return bool(taken)

    async def renew(self, user_id: int, lease: str) -> None:
        """Extends a lease that is still held (and the set with it, so it cannot expire
        under a long request)."""
        async with unavailable_as_503():
            await self._renew(keys=[_key(user_id)], args=[lease, LEASE_SECONDS])

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


def _as_redis(url: str) -> str:
    """``valkey(s)://`` as the ``redis(s)://`` URL the client library takes."""
    for scheme, same in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(scheme):
            return same + url.removeprefix(scheme)
    return url


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
