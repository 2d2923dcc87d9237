"""Per-user limits (requests per minute, generated tokens per UTC day) and recorded usage.

Requests per minute are counted in memory over a sliding minute (a restart forgives). Tokens per
day come from the ``usage`` table, which every finished generation updates with one committed
statement, so a crash loses at most the requests in flight; a day's total is cached in memory
after the first read. A request is admitted while the day's total is under the limit, so the
last one may pass it by at most its own ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from app.accounts.models import User
from app.db import Database
from app.errors import RequestRateLimited, TokenRateLimited
from app.system.logs import current_request

logger = logging.getLogger(__name__)

_MINUTE = 60.0
# At most one error line per this many seconds while usage cannot be written.
_FAILURE_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class RateStatus:
    """Where a user stands against their limits; 0 as a limit means none."""

    requests_limit: int
    requests_remaining: int
    requests_reset: float  # seconds until a request slot frees up
    tokens_limit: int
    tokens_remaining: int
    tokens_reset: float  # seconds until the UTC day ends

    def headers(self) -> list[tuple[str, str]]:
        """OpenAI's ``x-ratelimit-*`` headers; a limit of 0 (none) sends none for it."""
        headers = []
        if self.requests_limit:
            headers += [
                ("x-ratelimit-limit-requests", str(self.requests_limit)),
                ("x-ratelimit-remaining-requests", str(self.requests_remaining)),
                ("x-ratelimit-reset-requests", _duration(self.requests_reset)),
            ]
        if self.tokens_limit:
            headers += [
                ("x-ratelimit-limit-tokens", str(self.tokens_limit)),
                ("x-ratelimit-remaining-tokens", str(self.tokens_remaining)),
                ("x-ratelimit-reset-tokens", _duration(self.tokens_reset)),
            ]
        return headers


class DayUsage(msgspec.Struct, kw_only=True):
    """One user's use of the service on one UTC day."""

    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class UsageReport(msgspec.Struct, kw_only=True):
    """``GET /users/me/usage``: your limits, today's standing, and recent days."""

    requests_per_minute: Annotated[int, msgspec.Meta(description="Your limit; 0: none.")]
    tokens_per_day: Annotated[int, msgspec.Meta(description="Your limit; 0: none.")]
    tokens_today: Annotated[int, msgspec.Meta(description="Generated today (UTC).")]
    days: list[DayUsage]


class UserDayUsage(DayUsage, kw_only=True):
    """``DayUsage`` with the user it belongs to, for admins."""

    username: str


class UsageLimits:
    """Admits requests against each user's limits and records what they used."""

    def __init__(
        self,
        db: Database,
        *,
        requests_per_minute: int,
        tokens_per_day: int,
        concurrent: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_write_failure: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._rpm = requests_per_minute
        self._tpd = tokens_per_day
        self._concurrent = concurrent
        self._in_progress: collections.Counter[int] = collections.Counter()
        self._clock, self._wall = clock, wall
        self._windows: dict[int, collections.deque[float]] = {}
        self._today: dict[tuple[int, str], int] = {}
        # (user, day) -> [requests, prompt tokens, completion tokens] not yet written.
        self._held: dict[tuple[int, str], list[int]] = {}
        self._writing = asyncio.Lock()
        self._on_write_failure = on_write_failure
        self._last_failure_log = -math.inf

    def limits(self, user: User) -> tuple[int, int]:
        """The user's (requests per minute, tokens per day); 0 means no limit."""
        rpm = self._rpm if user.requests_per_minute is None else user.requests_per_minute
        tpd = self._tpd if user.tokens_per_day is None else user.tokens_per_day
        return rpm, tpd

    async def admit(self, user: User) -> RateStatus:
        """Counts one request for ``user``; raises ``RateLimited`` beyond a limit."""
        rpm, tpd = self.limits(user)
        day, day_left = self._day()
        used = await self._tokens_used(user.id, day) if tpd else 0
        now = self._clock()
        window = self._windows.setdefault(user.id, collections.deque())
        while window and now - window[0] >= _MINUTE:
            window.popleft()
        requests_reset = _MINUTE - (now - window[0]) if window else 0.0
        status = RateStatus(
            requests_limit=rpm,
            requests_remaining=max(rpm - len(window) - 1, 0),
            requests_reset=requests_reset,
            tokens_limit=tpd,
            tokens_remaining=max(tpd - used, 0),
            tokens_reset=day_left,
        )
        if rpm and len(window) >= rpm:
            raise RequestRateLimited(
                f"Rate limit reached for requests per minute: limit {rpm}; retry in "
                f"{math.ceil(requests_reset)}s.",
                retry_after=requests_reset,
                headers=dataclasses.replace(status, requests_remaining=0).headers(),
            )
        if tpd and used >= tpd:
            raise TokenRateLimited(
                f"Rate limit reached for generated tokens per day: limit {tpd}, used {used}; "
                f"the limit resets at 00:00 UTC, in {math.ceil(day_left)}s.",
                retry_after=day_left,
                headers=status.headers(),
            )
        if not window:
            status = dataclasses.replace(status, requests_reset=_MINUTE)
        window.append(now)
        return status

    def enter(self, user: User) -> Callable[[], None]:
        """Counts one request in progress for ``user``; returns what ends it (call it once).

        Raises ``RequestRateLimited`` when the user already has ``concurrent`` in progress: one
        user cannot hold every slot and the whole queue while others wait.
        """
        if self._concurrent and self._in_progress[user.id] >= self._concurrent:
            raise RequestRateLimited(
                f"You have {self._in_progress[user.id]} requests in progress, the most one user "
                "may have at once; send the next when one has finished.",
                retry_after=1,
                headers=[],
            )
        self._in_progress[user.id] += 1
        done = False

        def leave() -> None:
            nonlocal done
            if not done:
                done = True
                self._in_progress[user.id] -= 1
                if not self._in_progress[user.id]:
                    del self._in_progress[user.id]

        return leave

    async def record(self, user_id: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Adds one request's use to today's row, committed before this returns if it can be.

        Never raises: the answer has been generated and must reach its client. A row that cannot
        be written (a full disk, a read-only database) is held in memory, written with the next
        request's row, and counted in ``llm_usage_write_failures_total``; the limits count it
        meanwhile.
        """
        day, _ = self._day()
        key = (user_id, day)
        if key in self._today:
            self._today[key] += completion_tokens
        held = self._held.setdefault(key, [0, 0, 0])
        held[0] += 1
        held[1] += prompt_tokens
        held[2] += completion_tokens
        await self.flush()

    async def flush(self) -> bool:
        """Writes the rows held in memory; whether none is left."""
        async with self._writing:
            for key, (requests, prompt_tokens, completion_tokens) in list(self._held.items()):
                try:
                    await self._db.execute(
                        "INSERT INTO usage (user_id, day, requests, prompt_tokens,"
                        " completion_tokens) VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, day)"
                        " DO UPDATE SET requests = requests + excluded.requests,"
                        " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                        " completion_tokens = completion_tokens + excluded.completion_tokens",
                        (*key, requests, prompt_tokens, completion_tokens),
                    )
                except sqlite3.Error as exc:
                    self._failed(exc)
                    return False
                del self._held[key]
            return True

    @property
    def held(self) -> int:
        """Usage rows waiting in memory to be written."""
        return len(self._held)

    def _failed(self, exc: sqlite3.Error) -> None:
        if self._on_write_failure is not None:
            self._on_write_failure()
        now = self._clock()
        if now - self._last_failure_log >= _FAILURE_LOG_SECONDS:  # loud, not a flood
            self._last_failure_log = now
            logger.error(
                "cannot write usage to the database (%s); %d user-day rows are held in memory "
                "and written with the next request's",
                exc,
                len(self._held),
            )

    async def report(self, user: User, days: int) -> UsageReport:
        """The user's limits, today's generated tokens, and the last ``days`` days."""
        rpm, tpd = self.limits(user)
        history = await self.history(user.id, days)
        today = self.today()
        used = next((d.completion_tokens for d in history if d.day == today), 0)
        return UsageReport(
            requests_per_minute=rpm, tokens_per_day=tpd, tokens_today=used, days=history
        )

    async def history(self, user_id: int, days: int) -> list[DayUsage]:
        """The user's last ``days`` UTC days with any use, newest first."""
        today = dt.date.fromisoformat(self.today())
        since = (today - dt.timedelta(days=days - 1)).isoformat()
        rows = await self._db.fetch_all(
            "SELECT day, requests, prompt_tokens, completion_tokens FROM usage"
            " WHERE user_id = ? AND day >= ? ORDER BY day DESC",
            (user_id, since),
        )
        return [DayUsage(**dict(row)) for row in rows]

    async def everyone(self, since: str, until: str) -> list[UserDayUsage]:
        """Every user's use from ``since`` to ``until`` (UTC days, inclusive)."""
        rows = await self._db.fetch_all(
            "SELECT u.username, g.day, g.requests, g.prompt_tokens, g.completion_tokens"
            " FROM usage g JOIN users u ON u.id = g.user_id WHERE g.day BETWEEN ? AND ?"
            " ORDER BY g.day DESC, u.username",
            (since, until),
        )
        return [UserDayUsage(**dict(row)) for row in rows]

    def today(self) -> str:
        return self._day()[0]

    async def _tokens_used(self, user_id: int, day: str) -> int:
        key = (user_id, day)
        if key not in self._today:
            if len(self._today) > 10_000:  # yesterday's entries: drop them all, reread
                self._today.clear()
            row = await self._db.fetch_one(
                "SELECT completion_tokens FROM usage WHERE user_id = ? AND day = ?",
                (user_id, day),
            )
            held = self._held.get(key, [0, 0, 0])[2]
            self._today.setdefault(key, (int(row[0]) if row else 0) + held)
        return self._today[key]

    def _day(self) -> tuple[str, float]:
        """Today's UTC date, and seconds until it ends."""
        now = self._wall()
        date = dt.datetime.fromtimestamp(now, dt.UTC).date()
        midnight = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), dt.UTC)
        return date.isoformat(), midnight.timestamp() - now


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


async def within_limits(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: counts the request against the caller's limits; 429 beyond them.

    The ``x-ratelimit-*`` headers go on the response, whatever it turns out to be (the access
    layer adds them), and the caller is noted for the usage record.
    """
    if connection.scope.get("method") == "OPTIONS":
        return  # preflights carry no credentials
    limits: UsageLimits = connection.app.state.usage
    log = current_request()
    leave = limits.enter(connection.user)
    try:
        status = await limits.admit(connection.user)  # a RateLimited carries its own headers
    except BaseException:
        leave()
        raise
    if log is None:  # outside the access layer nothing would end it: count it as done
        leave()
        return
    log.account = connection.user
    log.rate_headers = status.headers()
    # In progress until the response has ended (the last byte of a stream included).
    log.on_end.append(leave)
