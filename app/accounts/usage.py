"""The usage ledger: what each user used per UTC day (requests, prompt and completion tokens).

Every finished generation adds to its user's row for the day with one committed statement, so a
crash loses at most the requests in flight. A row that cannot be written (a full disk) is held
in memory and written with the next one. Each day's generated tokens are cached after the first
read, for the daily limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import msgspec
import sqlalchemy as sa

from app.db import Database
from app.db.failures import FailedWrites
from app.db.tables import usage, users
from app.errors import DatabaseDown

logger = logging.getLogger(__name__)


class DayUsage(msgspec.Struct, kw_only=True):
    """One user's use of the service on one UTC day."""

    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    embedding_tokens: int = 0


class UsageReport(msgspec.Struct, kw_only=True):
    """``GET /users/me/usage``: your limits, today's standing, and recent days."""

    requests_per_minute: Annotated[int, msgspec.Meta(description="Your limit; 0: none.")]
    tokens_per_day: Annotated[int, msgspec.Meta(description="Your limit; 0: none.")]
    tokens_today: Annotated[int, msgspec.Meta(description="Generated and embedded today (UTC).")]
    days: list[DayUsage]


class UserDayUsage(DayUsage, kw_only=True):
    """``DayUsage`` with the user it belongs to, for admins."""

    username: str


_COUNTS = (
    usage.c.requests,
    usage.c.prompt_tokens,
    usage.c.completion_tokens,
    usage.c.embedding_tokens,
)


class UsageLedger:
    """Records and reads the ``usage`` table."""

    def __init__(
        self,
        db: Database,
        *,
        wall: Callable[[], float] = time.time,
        on_write_failure: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._wall = wall
        # Each day's tokens per user, read once and then counted here: only while this process
        # is the only writer (SQLite). With a database server, replicas write the same rows, so
        # every check reads the current total (one indexed read), and the daily limit holds
        # across them.
        self._cache_today = db.dialect == "sqlite"
        self._today: dict[tuple[int, str], int] = {}
        # (user, day) -> [requests, prompt tokens, completion tokens] not yet written.
        self._held: dict[tuple[int, str], list[int]] = {}
        self._writing = asyncio.Lock()
        self._failed_writes = FailedWrites(
            logger,
            "cannot write usage to the database (%s); %d user-day rows are held in memory and "
            "written with the next request's",
            on_failure=on_write_failure,
        )

    @asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: at its end, the rows still held are written if they can be."""
        try:
            yield
        finally:
            if not await self.flush():
                logger.error("%d usage rows could not be written before shutdown", self.held)

    async def record(
        self, user_id: int, prompt_tokens: int, completion_tokens: int, *, embedded: int = 0
    ) -> None:
        """Adds one request's use to today's row, committed before this returns if it can be.

        Never raises: the answer has been generated and must reach its client. A row that cannot
        be written (a full disk, a read-only database) is held in memory, written with the next
        request's row, and counted in ``llm_usage_write_failures_total``; the daily limit
        counts it meanwhile.
        """
        key = (user_id, self.today())
        if key in self._today:
            self._today[key] += completion_tokens + embedded
        held = self._held.setdefault(key, [0, 0, 0, 0])
        held[0] += 1
        held[1] += prompt_tokens
        held[2] += completion_tokens
        held[3] += embedded
        await self.flush()

    async def flush(self) -> bool:
        """Writes the rows held in memory; whether none is left."""
        async with self._writing:
            while self._held:
                # Taken out before the write: a request recorded meanwhile starts a new row.
                key = next(iter(self._held))
                row = self._held.pop(key)
                try:
                    await self._db.execute(self._add(key, row))
                except sa.exc.IntegrityError:
                    # The user was deleted meanwhile (maybe on another replica): their usage
                    # went with them, and this row has nowhere to go.
                    logger.info("dropped usage of user %d, deleted meanwhile", key[0])
                except (DatabaseDown, sa.exc.SQLAlchemyError, OSError) as exc:
                    held = self._held.setdefault(key, [0, 0, 0, 0])
                    for i, value in enumerate(row):
                        held[i] += value
                    self._failed_writes(exc, len(self._held))
                    return False
            return True

    @property
    def held(self) -> int:
        """Usage rows waiting in memory to be written."""
        return len(self._held)

    def _add(self, key: tuple[int, str], row: list[int]) -> sa.Executable:
        """Adds ``row`` to the user's day, creating it if it is the first."""
        user_id, day = key
        insert = self._db.insert(usage).values(
            user_id=user_id,
            day=day,
            requests=row[0],
            prompt_tokens=row[1],
            completion_tokens=row[2],
            embedding_tokens=row[3],
        )
        counts = ("requests", "prompt_tokens", "completion_tokens", "embedding_tokens")
        return insert.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[usage.c.user_id, usage.c.day],
            set_={name: usage.c[name] + insert.excluded[name] for name in counts},
        )

    async def tokens_today(self, user_id: int) -> int:
        """Tokens generated and embedded for ``user_id`` today (UTC), held rows included."""
        key = (user_id, self.today())
        if not self._cache_today or key not in self._today:
            if len(self._today) > 10_000:  # yesterday's entries: drop them all, reread
                self._today.clear()
            used = await self._db.scalar(
                sa.select(usage.c.completion_tokens + usage.c.embedding_tokens).where(
                    usage.c.user_id == key[0], usage.c.day == key[1]
                )
            )
            held_row = self._held.get(key, [0, 0, 0, 0])
            held = held_row[2] + held_row[3]
            if not self._cache_today:
                return int(used or 0) + held
            self._today.setdefault(key, int(used or 0) + held)
        return self._today[key]

    async def history(self, user_id: int, days: int) -> list[DayUsage]:
        """The user's last ``days`` UTC days with any use, newest first."""
        today = dt.date.fromisoformat(self.today())
        since = (today - dt.timedelta(days=days - 1)).isoformat()
        rows = await self._db.fetch_all(
            sa.select(*_COUNTS, usage.c.day)
            .where(usage.c.user_id == user_id, usage.c.day >= since)
            .order_by(usage.c.day.desc())
        )
        return [DayUsage(**dict(row)) for row in rows]

    async def everyone(self, since: str, until: str) -> list[UserDayUsage]:
        """Every user's use from ``since`` to ``until`` (UTC days, inclusive)."""
        rows = await self._db.fetch_all(
            sa.select(users.c.username, usage.c.day, *_COUNTS)
            .join_from(usage, users, users.c.id == usage.c.user_id)
            .where(usage.c.day.between(since, until))
            .order_by(usage.c.day.desc(), users.c.username)
        )
        return [UserDayUsage(**dict(row)) for row in rows]

    def today(self) -> str:
        """Today's UTC date, as ``YYYY-MM-DD``."""
        return self.day()[0]

    def day(self) -> tuple[str, float]:
        """Today's UTC date, and seconds until it ends."""
        now = self._wall()
        date = dt.datetime.fromtimestamp(now, dt.UTC).date()
        midnight = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), dt.UTC)
        return date.isoformat(), midnight.timestamp() - now
