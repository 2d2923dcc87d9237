"""Helpers for tests that run the service over real sockets."""

from __future__ import annotations

import socket
import time

import httpx


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
