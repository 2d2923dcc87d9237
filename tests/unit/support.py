"""Helpers for tests of the app over a fake engine, with a real SQLite file under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from app.factory import create_app
from app.settings import Settings

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"


# Set by the ``each_database`` fixture (tests/conftest.py) while a test runs on PostgreSQL.
DATABASE_URL: str | None = None


def settings_for(tmp_path: Path, **env: str) -> Settings:
    """Settings with the database under ``tmp_path`` (or on ``DATABASE_URL``) and a known
    admin password."""
    values = {
        "APP_DATA_DIR": str(tmp_path / "data"),
        **({"APP_DATABASE_URL": DATABASE_URL} if DATABASE_URL else {}),
        "APP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # Cheap hashing keeps the suite quick; the defaults are tested in test_accounts.py.
        "APP_PASSWORD_HASH_MEMORY_KIB": "1024",
        "APP_PASSWORD_HASH_TIME_COST": "1",
        # Limits are tested on their own (test_usage.py); elsewhere they would only get in the way.
        "APP_REQUESTS_PER_MINUTE": "0",
        "APP_TOKENS_PER_DAY": "0",
        "APP_CONCURRENT_PER_USER": "0",
    }
    values.update(env)
    return Settings.from_mapping(values)


async def login(client: AsyncTestClient[Any], username: str, password: str) -> str:
    """An access token from POST /token, as the OAuth2 password flow sends it."""
    response = await client.post(
        "/token",
        data={"grant_type": "password", "username": username, "password": password},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def weather_call_words(city: str) -> list[str]:
    """A call of ``get_weather(city)`` in the generic envelope, in the words a ``FakeEngine``
    writes one at a time."""
    return [
        '{"tool_calls":',
        '[{"name":',
        '"get_weather",',
        '"arguments":',
        '{"city":',
        f'"{city}"}}}}]}}',
    ]


@asynccontextmanager
async def admin_client(tmp_path: Path, engine: Any) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app over ``engine``, and a client signed in as the admin (a bearer token)."""
    app = create_app(settings_for(tmp_path), engine=engine)
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        yield client
