"""The real service on the real SmolLM2 GGUF, served by uvicorn on a loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, sync_playwright

from app.factory import create_app
from tests.integration.support import (
    CONTEXT_SIZE,
    SERVER_ADMIN_PASSWORD,
    RunningServer,
    access_token,
    new_api_key,
    served,
    server_settings,
)


@pytest.fixture(scope="session")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = server_settings(
        tmp_path_factory.mktemp("data"),
        model_file,
        APP_CONTEXT_SIZE=str(CONTEXT_SIZE),
        APP_MAX_LENGTH="16",
        APP_REQUESTS_PER_MINUTE="0",
        APP_TOKENS_PER_DAY="0",
        APP_CONCURRENT_PER_USER="0",
    )
    with served(create_app(settings)) as url:
        key = new_api_key(url, access_token(url, "admin", SERVER_ADMIN_PASSWORD), "tests")
        yield RunningServer(url=url, settings=settings, api_key=key)


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    """The official SDK, authenticated with an API key."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture
def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    """The official async SDK, authenticated with an API key."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (which never downloads a browser)."""
    assert Path(CHROMIUM).exists(), (
        "this test needs Debian's chromium (apt-get install chromium); scripts/test installs it "
        "when run as root"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()
