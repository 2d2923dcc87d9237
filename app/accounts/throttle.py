"""A brake on password guessing: failed attempts per key (a username, a client address, an
account changing its password) in a moving window, with the ``limits`` package.

An attempt is reserved before the password is checked, so a burst of concurrent guesses cannot
all pass the check while none has failed yet: at most as many attempts are verified at once as
the window has failures left. A failure stays in the window; a success frees its reservation
and clears the failures of the key it succeeded for.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from app.accounts.shared import unavailable_as_503
from app.errors import TooManyAttempts


class Attempt:
    """One guarded password check: mark it ``failed()`` if the password was wrong (before
    raising the error that says so, if any)."""

    def __init__(self) -> None:
        self.wrong = False

    def failed(self) -> None:
        self.wrong = True


class LoginThrottle:
    """``max_failures`` failed attempts per key within ``window_seconds``, then a pause."""

    def __init__(
        self, max_failures: int, window_seconds: int, storage: Storage | None = None
    ) -> None:
        self._item = RateLimitItemPerSecond(max_failures, window_seconds)
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())
        self._in_flight: collections.Counter[str] = collections.Counter()

    @asynccontextmanager
    async def attempt(self, *keys: str, clears: str | None = None) -> AsyncIterator[Attempt]:
        """Guards one password check for ``keys``; raises ``TooManyAttempts`` when any key is
        paused. On success the failures of ``clears`` (one of the keys) are forgotten."""
        # Reserve first, then look: concurrent attempts see each other's reservations.
        self._in_flight.update(keys)
        try:
            for key in keys:
                async with unavailable_as_503():
                    reset, remaining = await self._limiter.get_window_stats(self._item, key)
                if self._in_flight[key] > remaining:
                    wait = reset - time.time() if remaining <= 0 else 1
                    raise TooManyAttempts(max(1, math.ceil(wait)))
            outcome = Attempt()
            try:
                yield outcome
            finally:  # also when the wrong password is reported by raising
                if outcome.wrong:
                    async with unavailable_as_503():
                        for key in keys:
                            await self._limiter.hit(self._item, key)
            if clears is not None:
                async with unavailable_as_503():
                    await self._limiter.clear(self._item, clears)
        finally:
            self._in_flight.subtract(keys)
            for key in keys:
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]
