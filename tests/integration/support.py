"""Helpers for tests that run the service over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from litestar import Litestar


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
