"""The real service on the real SmolLM2 GGUF, served by uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from app.factory import create_app
from app.settings import Settings
from tests.integration.support import access_token, wait_healthy

MODEL_ID = "tinyllama-1.1b"
# Small enough that the context-length tests stay quick.
CONTEXT_SIZE = 512


ADMIN_PASSWORD = "integration-admin-password"


@dataclass
class RunningServer:
    url: str
    settings: Settings
    api_key: str


@pytest.fixture(scope="session")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings.from_mapping(
        {
            "APP_DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "APP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "APP_PASSWORD_HASH_MEMORY_KIB": "1024",
            "APP_PASSWORD_HASH_TIME_COST": "1",
            "APP_MODEL_PATH": str(model_file),
            "APP_MODEL_NAME": MODEL_ID,
            "APP_CONTEXT_SIZE": str(CONTEXT_SIZE),
            "APP_MAX_LENGTH": "16",
            "APP_REQUESTS_PER_MINUTE": "0",
            "APP_TOKENS_PER_DAY": "0",
            "APP_CONCURRENT_PER_USER": "0",
        }
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(settings), log_config=None, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(url)
        token = access_token(url, "admin", ADMIN_PASSWORD)
        key = httpx.post(
            f"{url}/users/me/api-keys",
            json={"name": "tests"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()["key"]
        yield RunningServer(url=url, settings=settings, api_key=key)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    """The official SDK, authenticated with an API key."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture
def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    """The official async SDK, authenticated with an API key."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
