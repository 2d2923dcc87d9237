"""Faults on a real ``python -m app serve``: SIGKILL in the middle of writes, clients that leave.

(SIGTERM during a stream is in test_cli.py; a full queue's 429 and recovery, and a consumer that
leaves freeing its slot, are in test_batching.py.)"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.integration.support import (
    ADMIN_PASSWORD,
    MODEL_ID,
    access_token,
    app_env,
    free_port,
    serving,
    wait_healthy,
)


@contextmanager
def killable(tmp_path: Path, model_file: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server that the test may SIGKILL; killed at the end if it has not been."""
    port = free_port()
    env = app_env(tmp_path, APP_PORT=str(port), APP_MODEL_PATH=str(model_file))
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url, process
    finally:
        process.kill()
        process.wait(timeout=60)


def hammer(until: threading.Event, work: list[object], action: object) -> threading.Thread:
    def run() -> None:
        while not until.is_set():
            try:
                result = action()  # type: ignore[operator]
            except httpx.HTTPError:
                return  # the server died under us: stop
            if result is not None:
                work.append(result)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_during_registrations_and_usage_writes_loses_no_committed_row(
    tmp_path: Path, model_file: Path
) -> None:
    registered: list[object] = []
    completed: list[object] = []
    counter = iter(range(1_000_000))
    with killable(tmp_path, model_file) as (url, process):
        key = httpx.post(
            f"{url}/users/me/api-keys",
            json={"name": "faults"},
            headers={"Authorization": f"Bearer {access_token(url, 'admin', ADMIN_PASSWORD)}"},
        ).json()["key"]

        def register() -> str | None:
            name = f"user{next(counter)}"
            answer = httpx.post(
                f"{url}/register", json={"username": name, "password": "password-123"}, timeout=30
            )
            return name if answer.status_code == 201 else None

        def complete() -> int | None:
            answer = httpx.post(
                f"{url}/v1/completions",
                json={"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            return answer.json()["usage"]["completion_tokens"] if answer.is_success else None

        stop = threading.Event()
        threads = [hammer(stop, registered, register) for _ in range(3)]
        threads += [hammer(stop, completed, complete) for _ in range(2)]
        deadline = time.monotonic() + 60
        while (len(registered) < 20 or len(completed) < 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # mid-write, with requests in flight
        process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(registered) >= 20
    assert len(completed) >= 5

    database = tmp_path / "data" / "app.db"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # It starts again cleanly, and every answered write is there.
    with serving(tmp_path, APP_MODEL_PATH=str(model_file)) as (url, _):
        token = access_token(url, "admin", ADMIN_PASSWORD)
        users = httpx.get(f"{url}/admin/users", headers={"Authorization": f"Bearer {token}"}).json()
        assert set(registered) <= {u["username"] for u in users}
        usage = httpx.get(
            f"{url}/users/me/usage", headers={"Authorization": f"Bearer {token}"}
        ).json()
        (today,) = usage["days"]
        assert today["requests"] >= len(completed)
        assert today["completion_tokens"] >= sum(completed)  # type: ignore[arg-type]
        assert access_token(url, str(registered[-1]), "password-123")


def test_a_client_that_leaves_a_stream_pays_for_what_was_generated(
    tmp_path: Path, model_file: Path
) -> None:
    with serving(tmp_path, APP_MODEL_PATH=str(model_file), APP_CONTEXT_SIZE="1024") as (url, _):
        auth = {"Authorization": f"Bearer {access_token(url, 'admin', ADMIN_PASSWORD)}"}
        body = {
            "model": MODEL_ID,
            "prompt": "Once upon a time",
            "max_tokens": 500,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST", f"{url}/v1/completions", json=body, headers=auth, timeout=60
        ) as response:
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received == 10:
                    break  # and leave
        assert received == 10
        # The slot is freed and the use recorded shortly after the client left.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(f"{url}/health").json()
            usage = httpx.get(f"{url}/users/me/usage", headers=auth).json()
            if health["slots_busy"] == 0 and usage["days"]:
                break
            time.sleep(0.1)
        (today,) = usage["days"]
        assert today["requests"] == 1
        assert 10 <= today["completion_tokens"] < 500
        assert usage["tokens_today"] == today["completion_tokens"]


def test_one_user_flooding_cannot_crowd_out_another_nor_lose_requests(
    tmp_path: Path, model_file: Path
) -> None:
    env = {"APP_PARALLEL": "2", "APP_CONCURRENT_PER_USER": "2", "APP_MODEL_PATH": str(model_file)}
    with serving(tmp_path, **env) as (url, _):
        admin = {"Authorization": f"Bearer {access_token(url, 'admin', ADMIN_PASSWORD)}"}
        httpx.post(f"{url}/register", json={"username": "bea", "password": "bea-password-1"})
        bea = {"Authorization": f"Bearer {access_token(url, 'bea', 'bea-password-1')}"}
        body = {"model": MODEL_ID, "prompt": "Tell me a story", "max_tokens": 96}
        flood: list[int] = []

        def send() -> None:
            answer = httpx.post(
                f"{url}/v1/completions",
                json={**body, "ignore_eos": True},
                headers=admin,
                timeout=120,
            )
            flood.append(answer.status_code)

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the flood holds both slots now
        other = httpx.post(
            f"{url}/v1/completions", json={**body, "max_tokens": 4}, headers=bea, timeout=120
        )
        for thread in threads:
            thread.join()
    assert other.status_code == 200, other.text
    # Over their cap of 2, the flood's other requests waited their turn instead of failing.
    assert sorted(flood) == [200] * 6


def test_behind_a_trusted_proxy_logins_are_throttled_per_real_client(
    tmp_path: Path, model_file: Path
) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default (FORWARDED_ALLOW_IPS).
    env = {"APP_MODEL_PATH": str(model_file), "APP_LOGIN_MAX_FAILURES": "3"}
    with serving(tmp_path, **env) as (url, _):

        def login(user: str, client: str) -> int:
            return httpx.post(
                f"{url}/token",
                data={"username": user, "password": "wrong-password"},
                headers={"X-Forwarded-For": client},
            ).status_code

        assert [login(f"user{i}", "203.0.113.7") for i in range(3)] == [401, 401, 401]
        assert login("user9", "203.0.113.7") == 429  # that client, whatever the username
        assert login("user9", "198.51.100.2") == 401  # another client behind the same proxy
