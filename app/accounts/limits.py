"""Per-user limits: requests per minute, generated tokens per UTC day, requests in progress.

Requests per minute are a moving window of the ``limits`` package (in memory: a restart
forgives). Tokens per day come from the usage ledger; a request is admitted while the day's total
is under the limit, so the last one may pass it by at most its own ``max_tokens``. Requests in
progress are counted while a generation holds its ``slot``; a request over the user's cap waits
its turn (first come, first served among that user's requests) instead of being refused, up to
the queue timeout, and a 429 then says how long a retry would likely wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.accounts.schemas import User
from app.accounts.shared import SharedSlots, renewing, unavailable_as_503
from app.accounts.usage import UsageLedger, UsageReport
from app.errors import RequestRateLimited, TokenRateLimited


@dataclass(frozen=True)
class RateStatus:
    """Where a user stands against their limits; 0 as a limit means none."""

    requests_limit: int
    requests_remaining: int
    requests_reset: float  # seconds until a request slot frees up
    tokens_limit: int
    tokens_remaining: int
    tokens_reset: float  # seconds until the UTC day ends

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers; a limit of 0 (none) sends none for it."""
        headers: dict[str, str] = {}
        if self.requests_limit:
            headers |= {
                "x-ratelimit-limit-requests": str(self.requests_limit),
                "x-ratelimit-remaining-requests": str(self.requests_remaining),
                "x-ratelimit-reset-requests": _duration(self.requests_reset),
            }
        if self.tokens_limit:
            headers |= {
                "x-ratelimit-limit-tokens": str(self.tokens_limit),
                "x-ratelimit-remaining-tokens": str(self.tokens_remaining),
                "x-ratelimit-reset-tokens": _duration(self.tokens_reset),
            }
        return headers


@dataclass(frozen=True)
class Caller:
    """Who is calling a ``/v1`` route, as admitted against their limits."""

    user: User
    rate: RateStatus

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for the response."""
        return self.rate.headers()


class Limits:
    """Admits requests against each user's limits."""

    def __init__(
        self,
        ledger: UsageLedger,
        *,
        requests_per_minute: int,
        tokens_per_day: int,
        concurrent: int = 0,
        queue_timeout: float = 60.0,
        max_waiting: int = 16,
        storage: Storage | None = None,
        shared_slots: SharedSlots | None = None,
    ) -> None:
        self._ledger = ledger
        self._rpm = requests_per_minute
        self._tpd = tokens_per_day
        self._concurrent = concurrent
        self._queue_timeout = queue_timeout
        self._max_waiting = max_waiting
        self._minute = MovingWindowRateLimiter(storage or MemoryStorage())
        self._users: dict[int, _UserSlots] = {}
        self._shared = shared_slots

    def limits(self, user: User) -> tuple[int, int]:
        """The user's (requests per minute, tokens per day); 0 means no limit."""
        rpm = self._rpm if user.requests_per_minute is None else user.requests_per_minute
        tpd = self._tpd if user.tokens_per_day is None else user.tokens_per_day
        return rpm, tpd

    async def admit(self, user: User) -> Caller:
        """Counts one request for ``user``; raises ``RateLimited`` beyond a limit (a request
        refused for its tokens does not count against its requests)."""
        rpm, tpd = self.limits(user)
        _, day_left = self._ledger.day()
        used = await self._ledger.tokens_today(user.id) if tpd else 0
        out_of_tokens = bool(tpd and used >= tpd)
        admitted, remaining, reset = True, 0, 0.0
        if rpm:
            item, key = RateLimitItemPerMinute(rpm), str(user.id)
            async with unavailable_as_503():
                if not out_of_tokens:
                    admitted = await self._minute.hit(item, key)
                window_end, remaining = await self._minute.get_window_stats(item, key)
            reset = max(window_end - time.time(), 0.0)
        status = RateStatus(
            requests_limit=rpm,
            requests_remaining=max(remaining, 0),
            requests_reset=reset,
            tokens_limit=tpd,
            tokens_remaining=max(tpd - used, 0),
            tokens_reset=day_left,
        )
        if out_of_tokens:
            raise TokenRateLimited(
                f"Rate limit reached for generated tokens per day: limit {tpd}, used {used}; "
                f"the limit resets at 00:00 UTC, in {math.ceil(day_left)}s.",
                retry_after=day_left,
                headers=status.headers(),
            )
        if not admitted:
            raise RequestRateLimited(
                f"Rate limit reached for requests per minute: limit {rpm}; retry in "
                f"{math.ceil(reset)}s.",
                retry_after=reset,
                headers=status.headers(),
            )
        return Caller(user, status)

    @asynccontextmanager
    async def slot(self, user: User) -> AsyncIterator[None]:
        """One request in progress for ``user``, for as long as the block runs.

        With ``concurrent`` already in progress, the request waits for one of them to end (one
        user cannot hold every engine slot while others wait, and their extra requests are not
        lost either). Raises ``RequestRateLimited`` when ``max_waiting`` of the user's requests
        wait already, or this one waited ``queue_timeout`` in vain; its ``Retry-After`` is what
        the user's recent requests suggest a retry would wait.
        """
        if not self._concurrent:
            yield
            return
        slots = self._users.get(user.id)
        if slots is None:
            slots = self._users[user.id] = _UserSlots(self._concurrent)
        slots.users += 1
        try:
            if slots.waiting >= self._max_waiting and slots.semaphore.locked():
                raise self._busy(slots, "and as many more are waiting")
            slots.waiting += 1
            deadline = time.monotonic() + self._queue_timeout
            lease = uuid.uuid4().hex
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await slots.semaphore.acquire()
            except TimeoutError:
                raise self._busy(slots, f"and this one waited {self._queue_timeout:g} s") from None
            finally:
                slots.waiting -= 1
            try:
                if self._shared is not None:  # the cap across every replica
                    await self._take_shared(slots, user.id, lease, deadline)
            except BaseException:
                slots.semaphore.release()
                raise
            started = time.monotonic()
            renew = (
                asyncio.create_task(renewing(self._shared, user.id, lease))
                if self._shared is not None
                else None
            )
            try:
                yield
            finally:
                slots.held(time.monotonic() - started)
                try:
                    if renew is not None and self._shared is not None:
                        renew.cancel()
                        await asyncio.wait({renew})  # no renewal after the give-back
                        with contextlib.suppress(Exception):
                            await asyncio.shield(self._shared.give_back(user.id, lease))
                finally:  # after the lease: the next waiter here finds the slot free there too
                    slots.semaphore.release()
        finally:
            slots.users -= 1
            if not slots.users:
                del self._users[user.id]

    async def _take_shared(
        self, slots: _UserSlots, user_id: int, lease: str, deadline: float
    ) -> None:
        """Waits (polling) for one of the user's slots across replicas, until ``deadline``."""
        assert self._shared is not None
        pause = 0.02
        try:
            while not await self._shared.try_take(user_id, self._concurrent, lease):
                if time.monotonic() >= deadline:
                    raise self._busy(slots, f"and this one waited {self._queue_timeout:g} s")
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, 0.25)
        except BaseException:
            # The script may have taken the slot just as this was cancelled: give it back.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._shared.give_back(user_id, lease))
            raise

    async def check_tokens(self, user: User, tokens: int) -> None:
        """Refuses work of ``tokens`` that would take the user past their daily limit (work
        whose size is known before it is done, as embedding inputs are)."""
        _, tpd = self.limits(user)
        if not tpd:
            return
        used = await self._ledger.tokens_today(user.id)
        if used + tokens > tpd:
            _, day_left = self._ledger.day()
            raise TokenRateLimited(
                f"This request's {tokens} tokens would pass your limit of {tpd} tokens per "
                f"day ({used} used); it resets at 00:00 UTC, in {math.ceil(day_left)}s.",
                retry_after=day_left,
                headers={},
            )

    def _busy(self, slots: _UserSlots, why: str) -> RequestRateLimited:
        # A retry waits for the requests ahead of it, ``concurrent`` at a time.
        rounds = math.ceil((slots.waiting + 1) / self._concurrent)
        return RequestRateLimited(
            f"You have {self._concurrent} requests in progress, the most one user may have at "
            f"once, {why}; retry after the Retry-After seconds.",
            retry_after=max(1.0, rounds * slots.typical),
            headers={},
        )

    async def report(self, user: User, days: int) -> UsageReport:
        """The user's limits, today's generated tokens, and the last ``days`` days."""
        rpm, tpd = self.limits(user)
        history = await self._ledger.history(user.id, days)
        today = self._ledger.today()
        used = next(
            (d.completion_tokens + d.embedding_tokens for d in history if d.day == today), 0
        )
        return UsageReport(
            requests_per_minute=rpm, tokens_per_day=tpd, tokens_today=used, days=history
        )


class _UserSlots:
    """One user's requests in progress, those waiting, and how long theirs usually take."""

    def __init__(self, concurrent: int) -> None:
        self.semaphore = asyncio.Semaphore(concurrent)  # waiters are served in order
        self.waiting = 0
        self.users = 0  # requests in progress or waiting: the entry goes with the last
        self.typical = 1.0  # seconds a request holds its slot, a moving average

    def held(self, seconds: float) -> None:
        self.typical = 0.8 * self.typical + 0.2 * seconds


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
