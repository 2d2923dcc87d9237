"""``python -m app serve`` as a user starts it: configuration errors, Hub download, model errors."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import httpx
from argon2 import PasswordHasher

from app.settings import DEFAULT_MODEL_REVISION
from tests.hubserver import serve_hub
from tests.integration.support import (
    ADMIN_PASSWORD,
    FILE,
    MODEL_ID,
    REPO,
    access_token,
    free_port,
    run_app,
    serving,
)


def test_bad_configuration_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    result = run_app(tmp_path, "serve", APP_PORT="eighty")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: invalid value 'eighty' for APP_PORT: Expected `int`, got `str`"
    )


def test_bad_value_in_dotenv_is_reported_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("APP_TEMPERATURE=hot\n")
    result = run_app(tmp_path, "check-config")
    assert result.returncode == 2
    assert "APP_TEMPERATURE" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_the_example_file(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    result = run_app(tmp_path, "check-config")
    assert result.returncode == 0, result.stderr


def test_first_start_downloads_from_the_hub_and_the_second_uses_the_cache(
    tmp_path: Path, model_file: Path
) -> None:
    env = {"APP_MODEL_REPO": REPO, "APP_MODEL_FILE": FILE, "APP_MODEL_NAME": "smol"}
    with serve_hub({(REPO, FILE): model_file}) as hub:
        with serving(tmp_path, HF_ENDPOINT=hub.url, **env) as (url, _):
            token = access_token(url, "admin", ADMIN_PASSWORD)
            completion = httpx.post(
                f"{url}/v1/completions",
                json={"model": "smol", "prompt": "Hello", "max_tokens": 4},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert completion.status_code == 200
            assert completion.json()["usage"]["completion_tokens"] > 0
        assert [r.path for r in hub.downloads()] == [
            f"/{REPO}/resolve/{DEFAULT_MODEL_REVISION}/{FILE}"
        ]

        # The file sits in the Hub's standard cache layout, where other tools find it.
        cached = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
        snapshot = cached / "snapshots" / DEFAULT_MODEL_REVISION / FILE
        assert snapshot.is_file()
        assert snapshot.stat().st_size == model_file.stat().st_size
        assert (cached / "blobs" / hub.sha256(model_file)).is_file()

        with serving(tmp_path, HF_ENDPOINT=hub.url, **env):
            pass
        assert len(hub.downloads()) == 1, "the second start must not download again"


def test_a_cached_model_starts_with_the_hub_offline(tmp_path: Path, model_file: Path) -> None:
    env = {"APP_MODEL_REPO": REPO, "APP_MODEL_FILE": FILE}
    with (
        serve_hub({(REPO, FILE): model_file}) as hub,
        serving(tmp_path, HF_ENDPOINT=hub.url, **env),
    ):
        pass
    with serving(tmp_path, HF_ENDPOINT="http://127.0.0.1:9", **env):
        pass


def test_a_file_missing_on_the_hub_stops_the_start_with_one_sentence(
    tmp_path: Path, model_file: Path
) -> None:
    with serve_hub({(REPO, FILE): model_file}) as hub:
        result = run_app(
            tmp_path,
            "serve",
            HF_ENDPOINT=hub.url,
            APP_MODEL_REPO=REPO,
            APP_MODEL_FILE="absent.gguf",
            APP_PORT=str(free_port()),
        )
    assert result.returncode == 1
    assert (
        f"{REPO}@{DEFAULT_MODEL_REVISION} has no file 'absent.gguf'; check APP_MODEL_FILE."
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_offline_without_a_cached_file_says_how_to_provide_one(tmp_path: Path) -> None:
    # An unreachable Hub takes the same path after huggingface_hub's retries (about 25 s).
    result = run_app(
        tmp_path,
        "serve",
        HF_HUB_OFFLINE="1",
        APP_MODEL_REPO=REPO,
        APP_MODEL_FILE=FILE,
        APP_PORT=str(free_port()),
    )
    assert result.returncode == 1
    assert "set APP_MODEL_PATH to a local GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_local_file_that_is_not_gguf_stops_the_start(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("not a model")
    result = run_app(tmp_path, "serve", APP_MODEL_PATH=str(bogus), APP_PORT=str(free_port()))
    assert result.returncode == 1
    assert f"The model file {bogus} is not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_database_from_a_newer_release(tmp_path: Path) -> None:
    assert run_app(tmp_path, "users", "list").returncode == 0  # creates the database
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    result = run_app(tmp_path, "serve", APP_PORT=str(free_port()))
    assert result.returncode == 2
    assert "error: The database was written by a newer release (schema user_version 99" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_published_jwt_secret(tmp_path: Path) -> None:
    sample = "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7"
    result = run_app(tmp_path, "serve", JWT_SECRET_KEY=sample)
    assert result.returncode == 2
    assert "JWT_SECRET_KEY is a published sample" in result.stderr
    assert sample not in result.stderr
    assert "Traceback" not in result.stderr


def test_users_commands_manage_accounts(tmp_path: Path) -> None:
    # An operator may create the admin before the first start; serve then creates none.
    admin = run_app(
        tmp_path, "users", "create", "root", "--admin", "--password-stdin", stdin="root-pass-1\n"
    )
    assert admin.stdout.strip() == "created admin root"
    created = run_app(
        tmp_path, "users", "create", "carol", "--password-stdin", stdin="carol-pass-1\n"
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created user carol"
    assert "carol-pass-1" not in created.stdout + created.stderr

    listing = run_app(tmp_path, "users", "list")
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert [(r[1], r[2], r[3]) for r in rows] == [("root", "yes", "no"), ("carol", "no", "no")]

    for action, expected in (("disable", "yes"), ("enable", "no")):
        assert run_app(tmp_path, "users", action, "carol").returncode == 0
        rows = [line.split() for line in run_app(tmp_path, "users", "list").stdout.splitlines()[1:]]
        assert rows[1][3] == expected
    assert run_app(tmp_path, "users", "promote", "carol").returncode == 0
    assert run_app(tmp_path, "users", "demote", "carol").returncode == 0
    passwd = run_app(
        tmp_path, "users", "passwd", "carol", "--password-stdin", stdin="carol-pass-2\n"
    )
    assert passwd.returncode == 0, passwd.stderr

    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        stored = conn.execute(
            "SELECT password_hash FROM users WHERE username = 'carol'"
        ).fetchone()[0]
    assert PasswordHasher(memory_cost=1024, time_cost=1).verify(stored, "carol-pass-2")

    assert run_app(tmp_path, "users", "delete", "carol").returncode == 0
    assert "carol" not in run_app(tmp_path, "users", "list").stdout


def test_users_commands_explain_what_went_wrong(tmp_path: Path) -> None:
    missing = run_app(tmp_path, "users", "disable", "nobody")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "error: There is no user 'nobody'."
    short = run_app(tmp_path, "users", "create", "dave", "--password-stdin", stdin="short\n")
    assert short.returncode == 2
    assert "password" in short.stderr
    bad_name = run_app(
        tmp_path, "users", "create", "no way", "--password-stdin", stdin="long-enough\n"
    )
    assert bad_name.returncode == 2
    assert "username" in bad_name.stderr
    run_app(
        tmp_path, "users", "create", "root", "--admin", "--password-stdin", stdin="root-pass-1\n"
    )
    last_admin = run_app(tmp_path, "users", "demote", "root")
    assert last_admin.returncode == 1
    assert "last enabled admin" in last_admin.stderr
    no_tty = run_app(tmp_path, "users", "create", "erin")
    assert no_tty.returncode == 2
    assert "--password-stdin" in no_tty.stderr


def test_sigterm_lets_a_running_stream_finish(tmp_path: Path, model_file: Path) -> None:
    # A generous grace: the test is about finishing, however slow the machine is.
    with serving(tmp_path, APP_MODEL_PATH=str(model_file), APP_SHUTDOWN_GRACE="300") as (
        url,
        process,
    ):
        token = access_token(url, "admin", ADMIN_PASSWORD)
        body = {
            "model": MODEL_ID,
            "prompt": "Story:",
            "max_tokens": 60,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=300,
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            process.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest
        finish = [json.loads(line[6:]) for line in rest if line.startswith("data: {")][-1]
        assert finish["choices"][0]["finish_reason"] == "length"
