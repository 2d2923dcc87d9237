"""Limits shared by replicas through a real Valkey/Redis: two ``Limits`` (two replicas' worth)
on one store count one user's requests per minute, requests in progress and failed logins
together; a replica that dies gives its slots back when their leases lapse; an unreachable store
fails closed with a 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.accounts import shared as shared_module
from app.accounts.limits import Limits
from app.accounts.schemas import User
from app.accounts.shared import SharedState
from app.accounts.throttle import LoginThrottle
from app.errors import LimitsUnavailable, RequestRateLimited, TooManyAttempts
from app.factory import create_app
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, settings_for


def someone(user_id: int) -> User:
    return User(
        id=user_id,
        username=f"u{user_id}",
        password_hash="x",
        is_admin=False,
        disabled=False,
        token_version=0,
        created_at=0,
    )


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[SharedState]]:
    """Two replicas' connections to one clean store."""
    states = [SharedState(redis_url), SharedState(redis_url)]
    assert states[0].slots is not None
    await states[0].slots._client.flushall()
    try:
        yield states
    finally:
        for state in states:
            if state.slots is not None:
                await state.slots.close()


class NoUsage:
    """The ledger's part that admitting reads, with nothing used (no daily limit here)."""

    def day(self) -> tuple[str, float]:
        return "2026-11-27", 3600.0

    async def tokens_today(self, user_id: int) -> int:
        return 0


def limits_on(state: SharedState, **kwargs: Any) -> Limits:
    settings: dict[str, Any] = {"requests_per_minute": 0, "tokens_per_day": 0, **kwargs}
    return Limits(NoUsage(), storage=state.storage, shared_slots=state.slots, **settings)  # type: ignore[arg-type]


async def test_requests_per_minute_are_exact_across_replicas(stores: list[SharedState]) -> None:
    replicas = [limits_on(state, requests_per_minute=10) for state in stores]
    user = someone(1)
    admitted = 0
    for i in range(14):
        try:
            await replicas[i % 2].admit(user)
            admitted += 1
        except RequestRateLimited:
            pass
    assert admitted == 10


async def test_the_concurrency_cap_holds_across_replicas(stores: list[SharedState]) -> None:
    a, b = (limits_on(state, concurrent=2, queue_timeout=5) for state in stores)
    user = someone(2)
    got_in = asyncio.Event()

    async def third_request() -> None:
        async with b.slot(user):
            got_in.set()

    async with contextlib.AsyncExitStack() as held:
        await held.enter_async_context(a.slot(user))
        await held.enter_async_context(b.slot(user))
        # The third, on either replica, waits for one of the two to end.
        third = asyncio.create_task(third_request())
        await asyncio.sleep(0.3)
        assert not got_in.is_set()
    # Both given back: the waiting one got its turn (and gave it back too).
    await asyncio.wait_for(third, 5)
    assert got_in.is_set()
    quick = limits_on(stores[0], concurrent=2, queue_timeout=0.2)
    async with quick.slot(user), quick.slot(user):
        with pytest.raises(RequestRateLimited, match="waited"):
            async with limits_on(stores[1], concurrent=2, queue_timeout=0.2).slot(user):
                pass


async def test_a_dead_replicas_slots_lapse(
    stores: list[SharedState], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_module, "LEASE_SECONDS", 0.5)
    state = stores[0]
    assert state.slots is not None
    assert await state.slots.try_take(3, 1, "dead-replica-lease")  # never given back
    survivor = limits_on(stores[1], concurrent=1, queue_timeout=5)
    async with survivor.slot(someone(3)):  # waits until the dead one's lease lapses
        pass


async def test_failed_logins_count_on_every_replica(stores: list[SharedState]) -> None:
    a, b = (LoginThrottle(2, 60, storage=state.storage) for state in stores)
    for throttle in (a, b):
        async with throttle.attempt("mallory") as attempt:
            attempt.failed()
    with pytest.raises(TooManyAttempts):
        async with a.attempt("mallory"):
            pass


async def test_an_unreachable_store_fails_closed() -> None:
    state = SharedState("redis://127.0.0.1:1/0")
    limits = limits_on(state, requests_per_minute=10, concurrent=2)
    with pytest.raises(LimitsUnavailable):
        await limits.admit(someone(4))
    with pytest.raises(LimitsUnavailable):
        async with limits.slot(someone(4)):
            pass
    assert state.slots is not None
    await state.slots.close()


async def test_the_service_answers_503_while_the_store_is_down(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, APP_REDIS_URL="redis://127.0.0.1:1/0", APP_REQUESTS_PER_MINUTE="10"
    )
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        login = await client.post("/token", data={"username": ADMIN, "password": ADMIN_PASSWORD})
        assert login.status_code == 503, login.text  # the login throttle cannot count either
        assert login.json()["error"]["code"] == "limits_unavailable"
        assert login.headers["retry-after"] == "5"


async def test_a_long_request_keeps_its_lease(
    stores: list[SharedState], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_module, "LEASE_SECONDS", 0.3)  # renewed every 0.1 s
    holder = limits_on(stores[0], concurrent=1, queue_timeout=5)
    other = limits_on(stores[1], concurrent=1, queue_timeout=0.6)
    user = someone(5)
    async with holder.slot(user):
        await asyncio.sleep(0.5)  # past a lease: renewals keep it
        with pytest.raises(RequestRateLimited):
            async with other.slot(user):
                pass
    async with other.slot(user):  # given back at the end
        pass


def test_valkey_urls_reach_the_same_client() -> None:
    assert shared_module._as_redis("valkey://h:1/0") == "redis://h:1/0"
    assert shared_module._as_redis("valkeys://h:1/0") == "rediss://h:1/0"
    assert shared_module._as_redis("redis://h:1/0") == "redis://h:1/0"
