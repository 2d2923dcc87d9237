"""A database server that goes away while the service runs: the routes that need it answer 503
``database_unavailable`` in their protocol's shape, never a 500 (a real PostgreSQL, stopped)."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from app.factory import create_app
from tests.realservers import find_postgres_bindir, run_postgres
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for


async def test_a_database_that_goes_away_is_a_503_not_a_500(tmp_path: Path) -> None:
    bindir = find_postgres_bindir()
    assert bindir is not None, "PostgreSQL is missing: run scripts/test, which installs it"
    with run_postgres(bindir) as postgres:
        settings = settings_for(tmp_path, APP_DATABASE_URL=postgres.url())
        async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
            token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
            assert (await client.get("/users/me", headers=token)).status_code == 200
            postgres.stop()
            me = await client.get("/users/me", headers=token)
            assert me.status_code == 503, me.text
            assert me.json()["error"]["code"] == "database_unavailable"
            assert me.headers["retry-after"] == "5"
            anthropic = await client.post(
                "/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers=token,
            )
            assert anthropic.status_code == 503, anthropic.text
            assert anthropic.json()["type"] == "error"  # Anthropic's shape on its route
            login_attempt = await client.post(
                "/token", data={"username": ADMIN, "password": ADMIN_PASSWORD}
            )
            assert login_attempt.status_code == 503, login_attempt.text
