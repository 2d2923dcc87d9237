"""Per-user limits and usage over a fake engine (4 words per generation) and a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from app.accounts.limits import Limits
from app.accounts.schemas import User
from app.accounts.usage import UsageLedger
from app.db import Database
from app.db.tables import users
from app.errors import RequestRateLimited, TokenRateLimited
from app.factory import create_app
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

# The accounts behind these tests live on SQLite and on a real PostgreSQL in turn.
pytestmark = pytest.mark.usefixtures("each_database")

MODEL = "tinyllama-1.1b"
BODY = {"model": MODEL, "prompt": "a b", "max_tokens": 16}


async def user(client: AsyncTestClient[Any], name: str) -> dict[str, str]:
    created = await client.post("/register", json={"username": name, "password": name * 3})
    assert created.status_code == 201, created.text
    return bearer(await login(client, name, name * 3))


def app_with(tmp_path: Path, **env: str) -> Any:
    return create_app(settings_for(tmp_path, **env), engine=FakeEngine())


async def test_requests_per_minute_are_limited_per_user_with_openai_headers(
    tmp_path: Path,
) -> None:
    async with AsyncTestClient(app=app_with(tmp_path, APP_REQUESTS_PER_MINUTE="3")) as client:
        bob, ann = await user(client, "bob"), await user(client, "ann")
        remaining = []
        for _ in range(3):
            ok = await client.post("/v1/completions", json=BODY, headers=bob)
            assert ok.status_code == 200
            assert ok.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(ok.headers["x-ratelimit-remaining-requests"])
            assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
        assert remaining == ["2", "1", "0"]
        refused = await client.post("/v1/completions", json=BODY, headers=bob)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "requests"
        assert error["param"] is None
        assert "requests per minute" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # Other endpoints under /v1 count too, and carry the headers.
        assert (await client.get("/v1/models", headers=bob)).status_code == 429
        # Another user is not affected.
        other = await client.get("/v1/models", headers=ann)
        assert other.status_code == 200
        assert other.headers["x-ratelimit-remaining-requests"] == "2"


async def test_generated_tokens_per_day_are_limited(tmp_path: Path) -> None:
    app = app_with(tmp_path, APP_TOKENS_PER_DAY="6", APP_REQUESTS_PER_MINUTE="0")
    async with AsyncTestClient(app=app) as client:
        bob = await user(client, "bob")
        first = await client.post("/v1/completions", json=BODY, headers=bob)
        assert first.headers["x-ratelimit-limit-tokens"] == "6"
        assert first.headers["x-ratelimit-remaining-tokens"] == "6"
        assert "x-ratelimit-limit-requests" not in first.headers  # no request limit: no header
        second = await client.post("/v1/completions", json=BODY, headers=bob)
        assert second.status_code == 200  # 4 of 6 used: admitted, and may pass the limit
        assert second.headers["x-ratelimit-remaining-tokens"] == "2"
        third = await client.post("/v1/completions", json=BODY, headers=bob)
        assert third.status_code == 429
        assert third.json()["error"]["type"] == "tokens"
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert third.headers["x-ratelimit-remaining-tokens"] == "0"
        assert "00:00 UTC" in third.json()["error"]["message"]

        report = (await client.get("/users/me/usage", headers=bob)).json()
        assert report["tokens_per_day"] == 6
        assert report["tokens_today"] == 8
        (today,) = report["days"]
        assert today["requests"] == 2
        assert today["prompt_tokens"] == 4
        assert today["completion_tokens"] == 8


async def test_an_admin_sets_per_user_limits_and_sees_everyones_usage(tmp_path: Path) -> None:
    async with AsyncTestClient(app=app_with(tmp_path, APP_REQUESTS_PER_MINUTE="100")) as client:
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        bob = await user(client, "bob")
        changed = await client.patch(
            "/admin/users/bob", json={"requests_per_minute": 1, "tokens_per_day": 0}, headers=admin
        )
        assert changed.status_code == 200
        assert changed.json()["requests_per_minute"] == 1
        assert changed.json()["tokens_per_day"] == 0
        assert (await client.post("/v1/completions", json=BODY, headers=bob)).status_code == 200
        assert (await client.post("/v1/completions", json=BODY, headers=bob)).status_code == 429
        # null: back to the default.
        back = await client.patch(
            "/admin/users/bob", json={"requests_per_minute": None}, headers=admin
        )
        assert back.json()["requests_per_minute"] is None
        assert back.json()["tokens_per_day"] == 0, "a field not sent is left alone"
        assert (await client.post("/v1/completions", json=BODY, headers=bob)).status_code == 200
        bad = await client.patch(
            "/admin/users/bob", json={"requests_per_minute": -1}, headers=admin
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "requests_per_minute"

        await client.post("/v1/completions", json=BODY, headers=admin)
        rows = (await client.get("/admin/usage", headers=admin)).json()
        assert {(r["username"], r["requests"]) for r in rows} == {("admin", 1), ("bob", 2)}
        assert (await client.get("/admin/usage", headers=bob)).status_code == 403
        assert (
            await client.get("/admin/usage", params={"since": "yesterday"}, headers=admin)
        ).status_code == 400
        old = await client.get(
            "/admin/usage", params={"since": "2020-01-01", "until": "2020-01-31"}, headers=admin
        )
        assert old.json() == []


@pytest.mark.sqlite_only
async def test_usage_is_committed_per_request(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        bob = await user(client, "bob")
        for _ in range(2):
            await client.post("/v1/completions", json=BODY, headers=bob)
        # Another connection (another process) sees both rows' effect at once.
        with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
            row = conn.execute("SELECT requests, completion_tokens FROM usage").fetchone()
        assert row == (2, 8)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def someone(user_id: int = 1, name: str = "u") -> User:
    return User(
        id=user_id,
        username=name,
        password_hash="x",
        is_admin=False,
        disabled=False,
        token_version=0,
        created_at=0,
    )


async def test_the_minute_slides_and_the_day_turns_at_utc_midnight(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(database_url)
    await db.open()
    try:
        await db.execute(
            sa.insert(users).values(
                id=1, username="u", password_hash="x", created_at=0, subject="s"
            )
        )
        wall = Clock(1_795_651_190.0)  # 10 s before a UTC midnight
        monkeypatch.setattr(time, "time", wall)  # the moving window's clock
        ledger = UsageLedger(db, wall=wall)
        limits = Limits(ledger, requests_per_minute=2, tokens_per_day=10)
        await limits.admit(someone())
        wall.now += 5
        caller = await limits.admit(someone())
        assert caller.rate.requests_remaining == 0
        assert caller.rate.tokens_reset == 5
        assert caller.headers()["x-ratelimit-remaining-requests"] == "0"
        wall.now += 54
        with pytest.raises(RequestRateLimited) as refused:
            await limits.admit(someone())
        assert refused.value.retry_after == 1
        wall.now += 1.5  # the first request leaves the window
        await limits.admit(someone())

        await ledger.record(1, 5, 10)
        wall.now += 120
        with pytest.raises(TokenRateLimited):
            await limits.admit(someone())
        assert [d.day for d in await ledger.history(1, 2)] == ["2026-11-26"]
    finally:
        await db.close()


async def test_a_request_over_the_users_cap_waits_its_turn() -> None:
    limits = Limits(None, requests_per_minute=0, tokens_per_day=0, concurrent=2)  # type: ignore[arg-type]
    bob, ann = someone(1, "bob"), someone(2, "ann")
    order: list[str] = []

    async def request(name: str, user: User, hold: asyncio.Event) -> None:
        async with limits.slot(user):
            order.append(f"{name} in")
            await hold.wait()
        order.append(f"{name} out")

    holds = {name: asyncio.Event() for name in ("b1", "b2", "b3", "b4", "a1")}
    tasks = [
        asyncio.create_task(request(name, ann if name == "a1" else bob, hold))
        for name, hold in holds.items()
    ]
    await asyncio.sleep(0.01)
    # bob's first two run, his next two wait; ann is not held up by bob's cap.
    assert order == ["b1 in", "b2 in", "a1 in"]
    holds["b2"].set()
    await asyncio.sleep(0.01)
    assert order[-2:] == ["b2 out", "b3 in"]  # first come, first served
    for hold in holds.values():
        hold.set()
    await asyncio.gather(*tasks)
    assert order.count("b4 in") == 1


async def test_too_many_waiting_or_too_long_a_wait_is_a_429_saying_how_long() -> None:
    limits = Limits(
        None,  # type: ignore[arg-type]
        requests_per_minute=0,
        tokens_per_day=0,
        concurrent=1,
        queue_timeout=0.05,
        max_waiting=1,
    )
    bob = someone(1, "bob")
    async with limits.slot(bob):
        with pytest.raises(RequestRateLimited, match="waited") as waited:
            async with limits.slot(bob):
                pass
        assert waited.value.retry_after >= 1
        waiter = asyncio.create_task(limits.slot(bob).__aenter__())
        await asyncio.sleep(0.01)
        with pytest.raises(RequestRateLimited, match="waiting"):
            async with limits.slot(bob):
                pass
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    async with limits.slot(bob):  # all of it given back
        pass


async def test_a_finished_request_is_no_longer_in_progress(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, APP_CONCURRENT_PER_USER="1")
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        bob = await user(client, "bob")
        for stream in (False, True, False):
            done = await client.post(
                "/v1/completions", json={**BODY, "stream": stream}, headers=bob
            )
            assert done.status_code == 200
        refused = await client.post("/v1/completions", json={**BODY, "n": 99}, headers=bob)
        assert refused.status_code == 400  # an error ends it too
        assert (await client.get("/v1/models", headers=bob)).status_code == 200


async def test_generations_are_queued_under_their_user(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with AsyncTestClient(app=create_app(settings_for(tmp_path), engine=engine)) as client:
        bob = await user(client, "bob")
        me = (await client.get("/users/me", headers=bob)).json()
        await client.post("/v1/completions", json={**BODY, "n": 2}, headers=bob)
        await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers=bob,
        )
    assert engine.owners == [me["id"]] * 3  # the engine gives owners turns (test_batching.py)


async def test_concurrent_records_of_one_user_are_all_written(database_url: str) -> None:
    db = Database(database_url)
    await db.open()
    try:
        await db.execute(
            sa.insert(users).values(
                id=1, username="u", password_hash="x", created_at=0, subject="s"
            )
        )
        ledger = UsageLedger(db)
        await asyncio.gather(*(ledger.record(1, 3, 2) for _ in range(50)))
        (today,) = await ledger.history(1, 1)
        assert (today.requests, today.prompt_tokens, today.completion_tokens) == (50, 150, 100)
    finally:
        await db.close()
