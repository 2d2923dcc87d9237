"""Helpers for tests that run the service over real sockets."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn
from litestar import Litestar
from openai.types.chat import ParsedChatCompletion

from app.settings import Settings

MODEL_ID = "smollm2-135m"
"""What the tests call the SmolLM2 test GGUF they serve."""
# Small enough that the context-length tests stay quick.
CONTEXT_SIZE = 512
SERVER_ADMIN_PASSWORD = "integration-admin-password"


@dataclass
class RunningServer:
    """The session's in-thread server (the ``server`` fixture)."""

    url: str
    settings: Settings
    api_key: str


def server_settings(data_dir: Path, model_file: Path, **overrides: str) -> Settings:
    """Settings of an in-thread server on the real GGUF (``served``): data in ``data_dir``, the
    known admin password, cheap password hashing; ``overrides`` (APP_* names) on top."""
    return Settings.from_mapping(
        {
            "APP_DATA_DIR": str(data_dir),
            "APP_ADMIN_PASSWORD": SERVER_ADMIN_PASSWORD,
            "APP_PASSWORD_HASH_MEMORY_KIB": "1024",
            "APP_PASSWORD_HASH_TIME_COST": "1",
            "APP_MODEL_PATH": str(model_file),
            "APP_MODEL_NAME": MODEL_ID,
            **overrides,
        }
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = 120) -> dict[str, object]:
    """Polls /health until it answers 200 (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                body: dict[str, object] = response.json()
                return body
            last = response.json()
            if isinstance(last, dict) and last.get("status") == "failed":
                break
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"service never became healthy: {last}")


def access_token(url: str, username: str, password: str) -> str:
    """A token from POST /token, sent as the seed's curl example sends it."""
    response = httpx.post(
        f"{url}/token",
        content=f"grant_type=password&username={username}&password={password}"
        "&scope=&client_id=string&client_secret=string",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def new_api_key(url: str, token: str, name: str) -> str:
    """A new API key for the owner of ``token``."""
    response = httpx.post(
        f"{url}/users/me/api-keys",
        json={"name": name},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


@contextmanager
def served(app: Litestar) -> Iterator[str]:
    """Serves ``app`` with uvicorn on a free loopback port, in a thread, until healthy; yields
    its URL and stops it (lifespan included) on leaving."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --- `python -m app` in a subprocess, as a user runs it ------------------------------------

REPO, FILE = "test-org/SmolLM2-135M-Instruct-GGUF", "smollm2-135m-instruct.q4_1.gguf"
ADMIN_PASSWORD = "cli-admin-password"


def app_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment: no APP_* or HF_* from the developer's shell leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APP_", "HF_", "HUGGINGFACE_", "JWT_"))
        and k not in ("ALGORITHM", "ACCESS_TOKEN_EXPIRE_MINUTES")
    }
    env.update(
        APP_DATA_DIR=str(tmp_path / "data"),
        APP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        APP_PASSWORD_HASH_MEMORY_KIB="1024",
        APP_PASSWORD_HASH_TIME_COST="1",
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        APP_HOST="127.0.0.1",
        APP_CONTEXT_SIZE="256",
        APP_MODEL_NAME=MODEL_ID,
        # Per-user limits are tested where they are the point (test_faults.py, unit tests).
        APP_REQUESTS_PER_MINUTE="0",
        APP_CONCURRENT_PER_USER="0",
    )
    env.update(overrides)
    return env


def run_app(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=app_env(tmp_path, **env),
        cwd=tmp_path,  # no stray .env
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def serving(tmp_path: Path, **env: str) -> AbstractContextManager[tuple[str, Popen]]:
    """``python -m app serve`` until healthy; on leaving, SIGTERM and a check of a clean exit."""
    return serving_limited(tmp_path, env, descriptors=None)


Popen = subprocess.Popen[bytes]


@contextmanager
def serving_limited(
    tmp_path: Path, env: dict[str, str], *, descriptors: int | None
) -> Iterator[tuple[str, Popen]]:
    """``serving``, with the process's open files capped at ``descriptors`` (``ulimit -n``)."""
    with starting(tmp_path, env, descriptors=descriptors) as (url, process):
        wait_healthy(url)
        yield url, process


@contextmanager
def starting(
    tmp_path: Path, env: dict[str, str], *, descriptors: int | None = None
) -> Iterator[tuple[str, Popen]]:
    """``python -m app serve`` started, not waited for; on leaving, SIGTERM and a check of a
    clean exit."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"  # a file, not a pipe: a full pipe would block the server

    def limit() -> None:
        if descriptors is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=app_env(tmp_path, APP_PORT=str(port), **env),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit,
        )
        try:
            yield f"http://127.0.0.1:{port}", process
        finally:
            process.send_signal(signal.SIGTERM)  # a no-op if the test already stopped it
            process.wait(timeout=300)
    if process.returncode == -signal.SIGKILL:
        return  # killed by the test on purpose: nothing was shut down
    output = log.read_text()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see it.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "application shut down" in output
    assert "Traceback" not in output, output


def streamed_completion(client: openai.OpenAI, **params: Any) -> ParsedChatCompletion[Any]:
    """A chat completion streamed through the SDK's stream helper, as it assembles it once every
    event was read."""
    with client.chat.completions.stream(**params) as events:
        for _ in events:
            pass
        return events.get_final_completion()
