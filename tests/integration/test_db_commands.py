"""``python -m app db upgrade`` and ``db copy --to postgresql://...``, as an operator moving one
machine's accounts into a shared PostgreSQL runs them, against a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.db import migrate
from tests.integration.support import (
    ADMIN_PASSWORD,
    access_token,
    new_api_key,
    run_app,
    serving,
)


def test_db_upgrade_migrates_and_says_where_it_is(tmp_path: Path, database_url: str) -> None:
    result = run_app(tmp_path, "db", "upgrade", APP_DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"is at schema {migrate.head()} (current)")
    assert "password" not in result.stdout  # the URL's password is never printed
    again = run_app(tmp_path, "db", "upgrade", APP_DATABASE_URL=database_url)
    assert again.returncode == 0, again.stderr


def test_a_bad_database_url_names_the_variable(tmp_path: Path) -> None:
    result = run_app(tmp_path, "db", "upgrade", APP_DATABASE_URL="mysql://x@y/z")
    assert result.returncode == 2
    assert "APP_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_copy_moves_users_keys_usage_and_tokens_into_postgresql(
    tmp_path: Path, postgres_db_url: str, model_file: Path
) -> None:
    model = {"APP_MODEL_PATH": str(model_file), "APP_MODEL_NAME": "smol"}
    created = run_app(
        tmp_path, "users", "create", "carol", "--password-stdin", stdin="carol-pw-1\n"
    )
    assert created.returncode == 0, created.stderr
    gone = run_app(tmp_path, "users", "create", "gone", "--password-stdin", stdin="gone-pw-11\n")
    assert gone.returncode == 0, gone.stderr
    assert run_app(tmp_path, "users", "delete", "gone").returncode == 0  # id 3 is spent
    with serving(tmp_path, **model) as (url, _):
        token = access_token(url, "carol", "carol-pw-1")
        key = new_api_key(url, token, "laptop")
        completion = httpx.post(
            f"{url}/v1/completions",
            json={"model": "smol", "prompt": "Hello", "max_tokens": 3},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert completion.status_code == 200, completion.text

    copied = run_app(tmp_path, "db", "copy", "--to", postgres_db_url)
    assert copied.returncode == 0, copied.stderr
    assert "copied 2 users, 1 api_keys, 1 usage, 0 responses, 1 secrets" in copied.stdout
    assert "postgres:postgres@" not in copied.stdout  # passwords stay out of the output

    again = run_app(tmp_path, "db", "copy", "--to", postgres_db_url)
    assert again.returncode == 1
    assert "already has rows in users" in again.stderr

    # The same service on PostgreSQL (another data directory: nothing comes from the old one).
    elsewhere = tmp_path / "replica"
    elsewhere.mkdir()
    with serving(elsewhere, APP_DATABASE_URL=postgres_db_url, **model) as (url, _):
        for credential in (token, key):  # issued on SQLite, still valid
            me = httpx.get(f"{url}/users/me", headers={"Authorization": f"Bearer {credential}"})
            assert me.status_code == 200, me.text
            assert me.json()["username"] == "carol"
        usage = httpx.get(f"{url}/users/me/usage", headers={"Authorization": f"Bearer {key}"})
        assert usage.json()["days"][0]["requests"] == 1
        admin = access_token(url, "admin", ADMIN_PASSWORD)
        new = httpx.post(
            f"{url}/admin/users",
            json={"username": "dave", "password": "dave-pw-123"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert new.status_code == 201, new.text
        assert new.json()["id"] == 4, "ids continue after the highest ever handed out"
