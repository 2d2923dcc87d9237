"""Regression tests for the holes an attacker's probe of the service found (issue 12)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from app.accounts.passwords import Passwords
from app.db import Database
from app.factory import build_services, create_app
from app.openai.response_store import StoredResponse
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

BOB, BOB_PASSWORD = "bob", "bob-password-1"


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password check the service makes, slowed down so that checks overlap."""
    checked: list[str] = []
    original = Passwords._verify

    def counting(self: Passwords, stored_hash: str | None, password: str) -> bool:
        checked.append(password)
        time.sleep(0.02)
        return original(self, stored_hash, password)

    monkeypatch.setattr(Passwords, "_verify", counting)
    return checked


async def test_a_deleted_users_token_never_authenticates_the_next_account(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine())
    async with AsyncTestClient(app=app) as client:
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        await client.post("/register", json={"username": BOB, "password": BOB_PASSWORD})
        stale = bearer(await login(client, BOB, BOB_PASSWORD))
        assert (await client.delete(f"/admin/users/{BOB}", headers=admin)).status_code == 204
        created = await client.post(
            "/admin/users",
            json={"username": "second-admin", "password": "second-password", "is_admin": True},
            headers=admin,
        )
        assert created.status_code == 201
        assert (await client.get("/users/me", headers=stale)).status_code == 401
        assert (await client.get("/admin/users", headers=stale)).status_code == 401


async def test_guessing_the_current_password_is_throttled(
    tmp_path: Path, verifications: list[str]
) -> None:
    app = create_app(settings_for(tmp_path, APP_LOGIN_MAX_FAILURES="3"), engine=FakeEngine())
    async with AsyncTestClient(app=app) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        key = (await client.post("/users/me/api-keys", json={"name": "k"}, headers=token)).json()
        verifications.clear()
        answers = [
            await client.post(
                "/users/me/password",
                json={"current_password": f"guess-{i}", "new_password": "a-new-password"},
                headers=bearer(key["key"]),
            )
            for i in range(6)
        ]
        assert [a.status_code for a in answers] == [400, 400, 400, 429, 429, 429]
        assert answers[-1].json()["error"]["code"] == "too_many_login_attempts"
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert len(verifications) == 3
        # The right password is paused too while the window is full: that is the point.
        paused = await client.post(
            "/users/me/password",
            json={"current_password": ADMIN_PASSWORD, "new_password": "a-new-password"},
            headers=token,
        )
        assert paused.status_code == 429


@pytest.mark.parametrize("username", ["root\n", "root\r\n", "\nroot", "ro\not"])
async def test_a_username_with_a_line_break_is_refused(tmp_path: Path, username: str) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine())
    async with AsyncTestClient(app=app) as client:
        response = await client.post(
            "/register", json={"username": username, "password": BOB_PASSWORD}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "username"
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        created = await client.post(
            "/admin/users", json={"username": username, "password": BOB_PASSWORD}, headers=admin
        )
        assert created.status_code == 400


class ReadOnly:
    """Makes every connection to a SQLite database read-only (``PRAGMA query_only``), as a full
    disk would make every write fail."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._on = False
        for engine in db.sync_engines():
            sa.event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, _: object) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA query_only = {'ON' if self._on else 'OFF'}")
        cursor.close()

    async def set(self, on: bool) -> None:
        self._on = on
        await self._db.reconnect()  # the pools' connections are replaced by new ones


async def test_an_answer_is_delivered_when_its_usage_cannot_be_written(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build_services(settings, engine=FakeEngine())
    chat = {"model": "tinyllama-1.1b", "messages": [{"role": "user", "content": "hi"}]}
    async with AsyncTestClient(app=create_app(settings, services)) as client:
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        made = await client.post("/users/me/api-keys", json={"name": "k"}, headers=admin)
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        db = services.db
        read_only = ReadOnly(db)
        await read_only.set(True)  # every write now fails, as on a full disk
        answer = await client.post("/v1/chat/completions", json=chat, headers=admin)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == " one two three four"
        metrics = (await client.get("/metrics", headers=admin)).text
        assert "llm_usage_write_failures_total 1.0" in metrics
        # A key's first use cannot be recorded: the request goes on.
        assert (await client.post("/v1/chat/completions", json=chat, headers=key)).is_success
        # A stored response that cannot be written is delivered, held and found.
        asked = {"model": "tinyllama-1.1b", "input": "hi"}
        stored = await client.post("/v1/responses", json=asked, headers=admin)
        assert stored.status_code == 200, stored.text
        assert stored.json()["output"][0]["content"][0]["text"] == " one two three four"
        metrics = (await client.get("/metrics", headers=admin)).text
        assert "llm_response_store_failures_total 1.0" in metrics
        found = f"/v1/responses/{stored.json()['id']}"
        assert (await client.get(found, headers=admin)).status_code == 200
        await read_only.set(False)  # space again: the held rows go in next
        assert (await client.post("/v1/chat/completions", json=chat, headers=admin)).is_success
        usage = (await client.get("/users/me/usage", headers=admin)).json()
        assert usage["days"][0]["requests"] == 4
        assert usage["days"][0]["completion_tokens"] == 16
        follow = {**asked, "previous_response_id": stored.json()["id"]}
        assert (await client.post("/v1/responses", json=follow, headers=admin)).is_success
        services.responses._store._held.clear()  # written by then: read from the database
        assert (await client.get(found, headers=admin)).status_code == 200


async def test_held_responses_keep_their_newest_version_and_are_written_in_order(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    services = build_services(settings, engine=FakeEngine())
    async with AsyncTestClient(app=create_app(settings, services)):
        store = services.responses._store
        admin = (await services.accounts.authenticate(ADMIN, ADMIN_PASSWORD)).id

        def version(response_id: str, status: str) -> StoredResponse:
            return StoredResponse(response_id, status.encode(), b"[]", b"[]")

        read_only = ReadOnly(services.db)
        await read_only.set(True)
        await store.save(admin, version("resp_a", "queued"), created_at=int(time.time()))
        await store.save(admin, version("resp_a", "completed"), created_at=int(time.time()))
        assert store.held == 1
        assert (await store.get(admin, "resp_a")) == version("resp_a", "completed")
        await read_only.set(False)
        # Saved at once, both flush: each write goes once, the newest version last.
        await asyncio.gather(
            store.save(admin, version("resp_b", "queued"), created_at=int(time.time())),
            store.save(admin, version("resp_c", "queued"), created_at=int(time.time())),
        )
        assert store.held == 0
        assert (await store.get(admin, "resp_a")) == version("resp_a", "completed")
        assert (await store.get(admin, "resp_c")) == version("resp_c", "queued")
        assert await store.delete(admin, "resp_a")
        assert await store.get(admin, "resp_a") is None
        # A background response's first save held, then a later one, written only where the
        # row is leased: the row is still made (the later save takes the held one's place).
        await read_only.set(True)
        first = dataclasses.replace(version("resp_d", "queued"), leased=True)
        later = dataclasses.replace(version("resp_d", "in_progress"), leased=True, write="leased")
        for saved in (first, later):
            await store.save(admin, saved, created_at=int(time.time()))
        await read_only.set(False)
        assert await store.flush()
        written = await store.get(admin, "resp_d")
        assert written is not None
        assert written.body == b"in_progress"
        assert written.lease_until is not None
        assert written.lease_until > time.time()
