"""Accounts and auth over HTTP: registration, tokens, API keys, admin, and forged credentials."""

from __future__ import annotations

import base64
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.accounts.auth import PUBLIC
from app.factory import create_app
from app.settings import ConfigError
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

# The accounts behind these tests live on SQLite and on a real PostgreSQL in turn.
pytestmark = pytest.mark.usefixtures("each_database")

MODEL = "tinyllama-1.1b"
BOB, BOB_PASSWORD = "bob", "bob-password-1"


def make_app(tmp_path: Path, **env: str) -> Litestar:
    return create_app(settings_for(tmp_path, **env), engine=FakeEngine())


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=make_app(tmp_path)) as client:
        yield client


async def register(client: AsyncTestClient[Any], username: str, password: str) -> dict[str, Any]:
    response = await client.post("/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def new_api_key(client: AsyncTestClient[Any], token: str, name: str = "k") -> dict[str, Any]:
    response = await client.post("/users/me/api-keys", json={"name": name}, headers=bearer(token))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: Any, status: int, *, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    return dict(body["error"])


def claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    return header, payload


# --- registration -------------------------------------------------------------------------------


async def test_register_returns_the_user_without_any_secret(client: AsyncTestClient[Any]) -> None:
    body = await register(client, BOB, BOB_PASSWORD)
    assert set(body) == {
        "id",
        "username",
        "is_admin",
        "disabled",
        "created_at",
        "requests_per_minute",
        "tokens_per_day",
    }
    assert (body["username"], body["is_admin"], body["disabled"]) == (BOB, False, False)


async def test_a_taken_username_is_409_whatever_its_letter_case(
    client: AsyncTestClient[Any],
) -> None:
    await register(client, BOB, BOB_PASSWORD)
    response = await client.post("/register", json={"username": "BoB", "password": BOB_PASSWORD})
    error = assert_error(response, 409, code="conflict")
    assert error["param"] == "username"


@pytest.mark.parametrize("username", ["ab", "x" * 65, "has space", "ünï", "a/b", "", "a;b"])
async def test_bad_usernames_are_400(client: AsyncTestClient[Any], username: str) -> None:
    response = await client.post("/register", json={"username": username, "password": "x" * 12})
    assert assert_error(response, 400)["param"] == "username"


@pytest.mark.parametrize("password", ["", "short", "seven77", "x" * 257])
async def test_weak_or_huge_passwords_are_400(client: AsyncTestClient[Any], password: str) -> None:
    response = await client.post("/register", json={"username": "carol", "password": password})
    assert assert_error(response, 400)["param"] == "password"


async def test_closed_registration_leaves_account_creation_to_admins(tmp_path: Path) -> None:
    async with AsyncTestClient(app=make_app(tmp_path, APP_REGISTRATION="closed")) as client:
        response = await client.post("/register", json={"username": BOB, "password": BOB_PASSWORD})
        assert_error(response, 403)
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        created = await client.post(
            "/admin/users", json={"username": BOB, "password": BOB_PASSWORD}, headers=admin
        )
        assert created.status_code == 201
        assert await login(client, BOB, BOB_PASSWORD)


# --- tokens -------------------------------------------------------------------------------------


async def test_the_seed_token_request_works_and_the_token_has_the_expected_claims(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/token",
        content=(
            f"grant_type=password&username={ADMIN}&password={ADMIN_PASSWORD}"
            "&scope=&client_id=string&client_secret=string"
        ),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    header, payload = claims(body["access_token"])
    assert header["alg"] == "HS256"
    assert {"sub", "iat", "exp", "jti"} <= set(payload)
    assert payload["exp"] - payload["iat"] == 30 * 60
    me = await client.get("/users/me", headers=bearer(body["access_token"]))
    assert me.json()["username"] == ADMIN


async def test_every_token_has_its_own_jti(client: AsyncTestClient[Any]) -> None:
    first = claims(await login(client, ADMIN, ADMIN_PASSWORD))[1]
    second = claims(await login(client, ADMIN, ADMIN_PASSWORD))[1]
    assert first["jti"] != second["jti"]


async def test_algorithm_and_lifetime_follow_the_settings(tmp_path: Path) -> None:
    app = make_app(tmp_path, ALGORITHM="HS512", ACCESS_TOKEN_EXPIRE_MINUTES="5")
    async with AsyncTestClient(app=app) as client:
        token = await login(client, ADMIN, ADMIN_PASSWORD)
        header, payload = claims(token)
        assert header["alg"] == "HS512"
        assert payload["exp"] - payload["iat"] == 5 * 60
        assert (await client.get("/users/me", headers=bearer(token))).status_code == 200


async def test_wrong_password_and_unknown_user_get_the_same_answer(
    client: AsyncTestClient[Any],
) -> None:
    wrong = await client.post("/token", data={"username": ADMIN, "password": "nope-nope-nope"})
    unknown = await client.post("/token", data={"username": "ghost", "password": "nope-nope"})
    assert wrong.json() == unknown.json()
    assert_error(wrong, 401, code="invalid_credentials")
    assert_error(unknown, 401, code="invalid_credentials")


async def test_only_the_password_grant_is_supported(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/token",
        data={"grant_type": "client_credentials", "username": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert assert_error(response, 400)["param"] == "grant_type"


async def test_token_request_without_a_password_is_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/token", data={"username": ADMIN})
    error = assert_error(response, 400)
    assert (error["param"], error["message"]) == ("password", "Missing required field 'password'.")


async def test_repeated_failures_pause_the_username(tmp_path: Path) -> None:
    app = make_app(tmp_path, APP_LOGIN_MAX_FAILURES="3", APP_LOGIN_LOCKOUT_SECONDS="120")
    async with AsyncTestClient(app=app) as client:
        for _ in range(3):
            failed = await client.post("/token", data={"username": ADMIN, "password": "guess-123"})
            assert failed.status_code == 401
        paused = await client.post("/token", data={"username": ADMIN, "password": ADMIN_PASSWORD})
        assert_error(paused, 429, code="too_many_login_attempts")
        assert 1 <= int(paused.headers["retry-after"]) <= 120


async def test_repeated_failures_from_one_address_pause_it_across_usernames(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path, APP_LOGIN_MAX_FAILURES="3")
    async with AsyncTestClient(app=app) as client:
        for name in ("u1", "u2", "u3"):
            await client.post("/token", data={"username": name, "password": "guess-123"})
        paused = await client.post("/token", data={"username": "u4", "password": "guess-123"})
        assert_error(paused, 429)


# --- the caller's account -------------------------------------------------------------------------


async def test_changing_the_password_ends_earlier_tokens(client: AsyncTestClient[Any]) -> None:
    await register(client, BOB, BOB_PASSWORD)
    old = await login(client, BOB, BOB_PASSWORD)
    changed = await client.post(
        "/users/me/password",
        json={"current_password": BOB_PASSWORD, "new_password": "bob-new-password"},
        headers=bearer(old),
    )
    assert changed.status_code == 204
    assert_error(await client.get("/users/me", headers=bearer(old)), 401)
    assert await login(client, BOB, "bob-new-password")
    wrong = await client.post("/token", data={"username": BOB, "password": BOB_PASSWORD})
    assert wrong.status_code == 401


async def test_changing_the_password_needs_the_current_one(client: AsyncTestClient[Any]) -> None:
    token = await login(client, ADMIN, ADMIN_PASSWORD)
    response = await client.post(
        "/users/me/password",
        json={"current_password": "not-it-at-all", "new_password": "whatever-new"},
        headers=bearer(token),
    )
    assert assert_error(response, 400)["param"] == "current_password"


# --- API keys -----------------------------------------------------------------------------------


async def test_api_key_lifecycle(client: AsyncTestClient[Any], tmp_path: Path) -> None:
    token = await login(client, ADMIN, ADMIN_PASSWORD)
    created = await new_api_key(client, token, "laptop")
    key = created["key"]
    assert key.startswith("sk-")
    assert created["prefix"] == key[:10]
    listed = (await client.get("/users/me/api-keys", headers=bearer(token))).json()
    assert listed == [
        {
            "id": created["id"],
            "name": "laptop",
            "prefix": key[:10],
            "created_at": created["created_at"],
            "last_used_at": None,
        }
    ]
    models = await client.get("/v1/models", headers=bearer(key))
    assert models.status_code == 200
    listed = (await client.get("/users/me/api-keys", headers=bearer(key))).json()
    assert listed[0]["last_used_at"] is not None

    revoked = await client.delete(f"/users/me/api-keys/{created['id']}", headers=bearer(token))
    assert revoked.status_code == 204
    assert_error(await client.get("/v1/models", headers=bearer(key)), 401)
    again = await client.delete(f"/users/me/api-keys/{created['id']}", headers=bearer(token))
    assert_error(again, 404, code="not_found")


async def test_a_key_name_with_control_characters_is_a_400(client: AsyncTestClient[Any]) -> None:
    token = await login(client, ADMIN, ADMIN_PASSWORD)
    for name in ("a\u0000b", "tab\there", "bell\u0007"):
        answer = await client.post("/users/me/api-keys", json={"name": name}, headers=bearer(token))
        assert answer.status_code == 400, (name, answer.text)  # PostgreSQL refuses NUL: not a 500
        assert answer.json()["error"]["param"] == "name"


@pytest.mark.sqlite_only
async def test_api_keys_are_stored_only_as_a_hash(
    client: AsyncTestClient[Any], tmp_path: Path
) -> None:
    key = (await new_api_key(client, await login(client, ADMIN, ADMIN_PASSWORD)))["key"]
    dump = "\n".join(sqlite3.connect(tmp_path / "data" / "app.db").iterdump())
    assert key not in dump
    assert key[10:] not in dump


async def test_nobody_revokes_another_users_key(client: AsyncTestClient[Any]) -> None:
    admin_key = await new_api_key(client, await login(client, ADMIN, ADMIN_PASSWORD))
    await register(client, BOB, BOB_PASSWORD)
    bob = await login(client, BOB, BOB_PASSWORD)
    response = await client.delete(f"/users/me/api-keys/{admin_key['id']}", headers=bearer(bob))
    assert_error(response, 404)
    still = await client.get("/v1/models", headers=bearer(admin_key["key"]))
    assert still.status_code == 200


# --- administration -----------------------------------------------------------------------------


async def test_admin_routes_are_for_admins(client: AsyncTestClient[Any]) -> None:
    await register(client, BOB, BOB_PASSWORD)
    bob = bearer(await login(client, BOB, BOB_PASSWORD))
    assert_error(await client.get("/admin/users", headers=bob), 403)
    assert_error(
        await client.patch(f"/admin/users/{ADMIN}", json={"disabled": True}, headers=bob), 403
    )
    assert_error(await client.get("/admin/users"), 401)


async def test_admin_manages_users(client: AsyncTestClient[Any]) -> None:
    admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    created = await client.post(
        "/admin/users", json={"username": BOB, "password": BOB_PASSWORD}, headers=admin
    )
    assert created.status_code == 201
    names = [u["username"] for u in (await client.get("/admin/users", headers=admin)).json()]
    assert names == [ADMIN, BOB]

    promoted = await client.patch(f"/admin/users/{BOB}", json={"is_admin": True}, headers=admin)
    assert promoted.json()["is_admin"] is True
    bob = bearer(await login(client, BOB, BOB_PASSWORD))
    assert (await client.get("/admin/users", headers=bob)).status_code == 200
    demoted = await client.patch(f"/admin/users/{BOB}", json={"is_admin": False}, headers=admin)
    assert demoted.json()["is_admin"] is False
    assert_error(await client.get("/admin/users", headers=bob), 403)

    reset = await client.patch(
        f"/admin/users/{BOB}", json={"password": "reset-by-admin"}, headers=admin
    )
    assert reset.status_code == 200
    assert_error(await client.get("/users/me", headers=bob), 401)
    assert await login(client, BOB, "reset-by-admin")

    deleted = await client.delete(f"/admin/users/{BOB}", headers=admin)
    assert deleted.status_code == 204
    assert_error(await client.get(f"/admin/users/{BOB}", headers=admin), 404)


async def test_disabling_ends_tokens_and_api_keys_until_enabled(
    client: AsyncTestClient[Any],
) -> None:
    admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    await register(client, BOB, BOB_PASSWORD)
    token = await login(client, BOB, BOB_PASSWORD)
    key = (await new_api_key(client, token))["key"]

    disabled = await client.patch(f"/admin/users/{BOB}", json={"disabled": True}, headers=admin)
    assert disabled.json()["disabled"] is True
    assert_error(await client.get("/users/me", headers=bearer(token)), 401)
    assert_error(await client.get("/v1/models", headers=bearer(key)), 401)
    refused = await client.post("/token", data={"username": BOB, "password": BOB_PASSWORD})
    assert_error(refused, 401, code="invalid_credentials")

    await client.patch(f"/admin/users/{BOB}", json={"disabled": False}, headers=admin)
    assert_error(await client.get("/users/me", headers=bearer(token)), 401)  # still ended
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    assert await login(client, BOB, BOB_PASSWORD)


@pytest.mark.sqlite_only
async def test_deleting_a_user_deletes_their_keys_and_ends_their_tokens(
    client: AsyncTestClient[Any], tmp_path: Path
) -> None:
    admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    await register(client, BOB, BOB_PASSWORD)
    token = await login(client, BOB, BOB_PASSWORD)
    key = (await new_api_key(client, token))["key"]
    await client.delete(f"/admin/users/{BOB}", headers=admin)
    assert_error(await client.get("/users/me", headers=bearer(token)), 401)
    assert_error(await client.get("/v1/models", headers=bearer(key)), 401)
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"disabled": True}), ("PATCH", {"is_admin": False}), ("DELETE", None)],
)
async def test_the_last_admin_cannot_be_removed(
    client: AsyncTestClient[Any], method: str, body: dict[str, Any] | None
) -> None:
    admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    response = await client.request(method, f"/admin/users/{ADMIN}", json=body, headers=admin)
    assert_error(response, 409)
    assert (await client.get("/users/me", headers=admin)).json()["is_admin"] is True


# --- what is public, and forged credentials ------------------------------------------------------


async def test_public_routes_need_no_credentials(client: AsyncTestClient[Any]) -> None:
    for path in ("/", "/health", "/docs", "/redoc", "/openapi.json", "/schema/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/console/static/console.js")).status_code == 200


def protected_routes(app: Litestar) -> list[tuple[str, str]]:
    """Every (method, path) that needs credentials, with sample path parameters."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.opt.get(PUBLIC) or route.path.startswith("/schema"):
                continue
            path = re.sub(r"\{key_id:int\}", "1", route.path)
            path = re.sub(r"\{username:str\}", ADMIN, path)
            found.extend((method, path) for method in handler.http_methods if method != "OPTIONS")
    return sorted(set(found))


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_credentials(
    secret: str, valid: str, admin_id: int, victims: dict[str, str]
) -> dict[str, str]:
    """Tokens and keys that must all be refused, by what is wrong with them."""
    now = int(time.time())
    subject = claims(valid)[1]["sub"]
    good = {"sub": subject, "iat": now, "exp": now + 600, "jti": "j", "extras": {"ver": 0}}
    header, payload, signature = valid.split(".")

    def signed(claims: dict[str, Any], key: str = secret, alg: str = "HS256") -> str:
        return jwt.encode(claims, key, algorithm=alg)

    def without(*names: str) -> dict[str, Any]:
        return {k: v for k, v in good.items() if k not in names}

    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}.",
        "alg None": f"{b64({'alg': 'None', 'typ': 'JWT'})}.{b64(good)}.",
        "other key": signed(good, "another-secret-that-is-long-enough-000"),
        "HS512 with our key": signed(good, alg="HS512"),
        "HS384 with our key": signed(good, alg="HS384"),
        "RS256 header, HMAC body": f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(good)}.{signature}",
        "expired": signed({**good, "iat": now - 7200, "exp": now - 3600}),
        "not yet valid": signed({**good, "nbf": now + 3600}),
        "issued in the future": signed({**good, "iat": now + 3600, "exp": now + 7200}),
        "no exp": signed(without("exp")),
        "no sub": signed(without("sub")),
        "no iat": signed(without("iat")),
        "no jti": signed(without("jti")),
        "no version": signed(without("extras")),
        "old version": signed({**good, "extras": {"ver": 7}}),
        "unknown user": signed({**good, "sub": "9999"}),
        "the user's id as sub (the old format)": signed({**good, "sub": str(admin_id)}),
        "username as sub": signed({**good, "sub": ADMIN}),
        "tampered payload": f"{header}.{b64({**good, 'sub': '2'})}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "no signature": f"{header}.{payload}.",
        "two parts": f"{header}.{payload}",
        "garbage": "not-a-token",
        "dots": "a.b.c",
        "huge": "eyJ" + "A" * 10_000,
        "unknown api key": "sk-" + "x" * 43,
        "api key, one char changed": victims["key"][:-1]
        + ("A" if victims["key"][-1] != "A" else "B"),
        **{name: credential for name, credential in victims.items() if name != "key"},
    }


async def test_every_protected_route_refuses_every_forged_credential(tmp_path: Path) -> None:
    secret = "a-configured-secret-for-this-test-" + "0123456789" * 4
    app = make_app(tmp_path, JWT_SECRET_KEY=secret)
    async with AsyncTestClient(app=app) as client:
        admin_token = await login(client, ADMIN, ADMIN_PASSWORD)
        admin = bearer(admin_token)
        admin_id = (await client.get("/users/me", headers=admin)).json()["id"]
        key = (await new_api_key(client, admin_token))["key"]
        victims: dict[str, str] = {"key": key}
        for name, action in (("deleted", "DELETE"), ("disabled", "PATCH"), ("renamed", "PATCH")):
            await register(client, name, BOB_PASSWORD)
            victim = await login(client, name, BOB_PASSWORD)
            victim_key = (await new_api_key(client, victim))["key"]
            body = {"disabled": True} if name == "disabled" else {"password": "changed-password"}
            await client.request(
                action,
                f"/admin/users/{name}",
                json=None if action == "DELETE" else body,
                headers=admin,
            )
            victims[f"token of {name} user"] = victim
            if name != "renamed":  # a password change ends tokens, not API keys
                victims[f"API key of {name} user"] = victim_key

        routes = protected_routes(app)
        assert ("POST", "/v1/completions") in routes
        assert ("GET", "/admin/users") in routes
        assert len(routes) >= 12
        # The real credentials work, so the refusals below are not for some other reason.
        assert (await client.get("/users/me", headers=admin)).status_code == 200
        assert (await client.get("/users/me", headers=bearer(key))).status_code == 200

        forged = forged_credentials(secret, admin_token, admin_id, victims)
        headers = {name: bearer(value) for name, value in forged.items()}
        headers |= {
            "no header": {},
            "empty bearer": {"Authorization": "Bearer "},
            "scheme only": {"Authorization": "Bearer"},
            "Basic scheme": {"Authorization": f"Basic {admin_token}"},
            "Token scheme": {"Authorization": f"Token {admin_token}"},
            "no scheme": {"Authorization": admin_token},
            "token in a cookie": {"Cookie": f"token={admin_token}"},
        }
        failures = []
        for method, path in routes:
            for name, header in headers.items():
                response = await client.request(method, path, headers=header, json={})
                if response.status_code != 401 or "www-authenticate" not in response.headers:
                    failures.append(f"{method} {path} with {name}: {response.status_code}")
                elif path.startswith("/v1/messages"):  # Anthropic's error shape there
                    assert response.json()["error"]["type"] == "authentication_error"
                else:
                    assert_error(response, 401)
        assert not failures, "\n".join(failures)


async def test_preflight_requests_without_credentials_never_fail(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with AsyncTestClient(app=app) as client:
        for _, path in protected_routes(app):
            options = await client.options(path)
            assert options.status_code == 204, (path, options.text)
            assert "allow" in options.headers
            head = await client.head(path)
            assert head.status_code in (401, 405), (path, head.status_code)


# --- the JWT secret and the first admin ---------------------------------------------------------


@pytest.mark.sqlite_only
async def test_a_generated_secret_is_kept_in_the_database_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    async with AsyncTestClient(app=make_app(tmp_path)) as client:
        token = await login(client, ADMIN, ADMIN_PASSWORD)
    assert not (tmp_path / "data" / "jwt_secret").exists(), "no per-replica file"
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        (secret,) = conn.execute("SELECT value FROM secrets WHERE name = 'jwt'").fetchone()
    assert len(secret) >= 64
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"]
    async with AsyncTestClient(app=make_app(tmp_path)) as client:
        assert (await client.get("/users/me", headers=bearer(token))).status_code == 200


@pytest.mark.sqlite_only
async def test_an_earlier_releases_secret_file_moves_into_the_database(tmp_path: Path) -> None:
    earlier = "an-earlier-release-generated-this-" + "s" * 40
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jwt_secret").write_text(earlier + "\n")
    async with AsyncTestClient(app=make_app(tmp_path)) as client:
        token = await login(client, ADMIN, ADMIN_PASSWORD)
    assert jwt.decode(token, earlier, algorithms=["HS256"])["sub"], "old tokens stay valid"
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        (secret,) = conn.execute("SELECT value FROM secrets WHERE name = 'jwt'").fetchone()
    assert secret == earlier


@pytest.mark.sqlite_only
async def test_a_configured_secret_signs_the_tokens(tmp_path: Path) -> None:
    secret = "configured-secret-" + "q" * 20 + "0123456789"
    async with AsyncTestClient(app=make_app(tmp_path, JWT_SECRET_KEY=secret)) as client:
        token = await login(client, ADMIN, ADMIN_PASSWORD)
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"]
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        assert conn.execute("SELECT count(*) FROM secrets").fetchone() == (0,)


@pytest.mark.parametrize(
    "secret",
    [
        "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
        "a" * 40,
        "abababababababababababababababababababab",
    ],
)
def test_a_published_or_trivial_secret_refuses_to_start(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY is a published sample"):
        make_app(tmp_path, JWT_SECRET_KEY=secret)


def test_a_short_secret_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        make_app(tmp_path, JWT_SECRET_KEY="short-secret")


def test_the_secret_must_be_as_long_as_the_hash(tmp_path: Path) -> None:
    secret = "0123456789abcdefghijklmnopqrstuvwxyzABCD"  # 40 bytes: enough for HS256 only
    make_app(tmp_path / "a", JWT_SECRET_KEY=secret)
    with pytest.raises(ConfigError, match="at least 64 bytes long for HS512"):
        make_app(tmp_path / "b", JWT_SECRET_KEY=secret, ALGORITHM="HS512")


async def test_without_a_configured_password_the_first_admin_gets_one_in_a_private_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(tmp_path, APP_ADMIN_PASSWORD="")
    async with AsyncTestClient(app=app) as client:
        path = tmp_path / "data" / "initial_admin_password"
        password = path.read_text().strip()
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(password) >= 16
        lines = [
            r.getMessage() for r in caplog.records if "created the admin user" in r.getMessage()
        ]
        assert len(lines) == 1
        assert str(path) in lines[0]
        assert password not in caplog.text, "a password never goes to the log"
        for guess in ("admin", "password", "admin123", "changeme"):
            refused = await client.post("/token", data={"username": ADMIN, "password": guess})
            assert refused.status_code in (400, 401)
        assert await login(client, ADMIN, password)
    caplog.clear()
    async with AsyncTestClient(app=make_app(tmp_path, APP_ADMIN_PASSWORD="")):
        assert not [r for r in caplog.records if "created the admin user" in r.getMessage()]
    assert path.read_text().strip() == password, "a second start leaves it alone"


async def test_secrets_never_reach_the_logs_or_error_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with AsyncTestClient(app=make_app(tmp_path)) as client:
        await register(client, BOB, BOB_PASSWORD)
        token = await login(client, BOB, BOB_PASSWORD)
        key = (await new_api_key(client, token))["key"]
        bodies = [
            (
                await client.post(
                    "/token", data={"username": BOB, "password": "wrong-" + BOB_PASSWORD}
                )
            ).text,
            (await client.get("/users/me", headers=bearer(token + "x"))).text,
            (await client.get("/users/me", headers=bearer(key + "x"))).text,
            (await client.post("/register", json={"username": BOB, "password": BOB_PASSWORD})).text,
        ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (BOB_PASSWORD, ADMIN_PASSWORD, token, key, key[10:]):
        assert secret not in logged
        assert all(secret not in body for body in bodies)
