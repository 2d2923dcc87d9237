"""Request ids, log formats and /metrics, over a fake engine."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from app.errors import QueueFull
from app.factory import build_services, create_app
from app.system.logs import JsonFormatter, TextFormatter
from tests.integration.support import free_port
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

MODEL = "tinyllama-1.1b"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings_for(tmp_path), engine=FakeEngine())
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_a_request_id_is_taken_from_the_client_or_made(
    client: AsyncTestClient[Any],
) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    made = await client.get("/nothing-here")
    assert made.status_code == 404
    assert len(made.headers["x-request-id"]) == 32
    # Ids that could forge log lines or flood them are replaced.
    for bad in (b"a b", b"x" * 200, "id\u00e9".encode("latin-1"), b"1\\n2"):
        replaced = await client.get("/health", headers={b"X-Request-ID": bad})
        assert replaced.headers["x-request-id"].encode() != bad
        assert len(replaced.headers["x-request-id"]) == 32


def record(message: str, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("app.access", logging.INFO, __file__, 1, message, None, None)
    entry.fields = fields
    return entry


async def test_health_checks_are_not_access_lines_unless_they_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer polls /health every few seconds: its answers are debug lines, unless
    it says the service is not ready."""
    settings = settings_for(tmp_path)
    services = build_services(settings, engine=FakeEngine())
    async with AsyncTestClient(app=create_app(settings, services)) as client:
        with caplog.at_level(logging.DEBUG, logger="app.access"):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/v1/models")).status_code == 401
            services.host.stopping = True  # draining: HAProxy should hear it
            assert (await client.get("/health")).status_code == 503
    levels = [
        (record.fields["status"], record.levelno)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == "app.access"
    ]
    assert levels == [(200, logging.DEBUG), (401, logging.INFO), (503, logging.INFO)]


def test_json_lines_carry_the_request_id_and_fields() -> None:
    entry = record("request", status=200, user="ann")
    entry.request_id = "req-1"  # what the handler's filter stamps on records
    line = json.loads(JsonFormatter().format(entry))
    assert line["request_id"] == "req-1"
    assert line["message"] == "request"
    assert line["status"] == 200
    assert line["user"] == "ann"
    assert line["level"] == "info"
    assert line["time"].endswith("Z")


def test_text_lines_are_readable() -> None:
    entry = record("request", status=200, user=None, model="m")
    entry.request_id = "req-2"
    line = TextFormatter().format(entry)
    assert line.endswith("app.access: request status=200 model=m [req-2]")


async def test_metrics_are_for_admins_and_parse_as_prometheus_text(
    client: AsyncTestClient[Any],
) -> None:
    assert (await client.get("/metrics")).status_code == 401
    admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    await client.post(
        "/register", json={"username": "bob", "password": "bob-password-1"}, headers=admin
    )
    user = bearer(await login(client, "bob", "bob-password-1"))
    assert (await client.get("/metrics", headers=user)).status_code == 403

    done = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a b c", "max_tokens": 3}, headers=user
    )
    assert done.status_code == 200
    scraped = await client.get("/metrics", headers=admin)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    assert samples[("llm_prompt_tokens_total", (("model", MODEL),))] == 3
    assert samples[("llm_tokens_predicted_total", (("model", MODEL),))] == 3
    assert samples[("llm_requests_total", (("model", MODEL), ("outcome", "length")))] == 1
    assert samples[("llm_time_to_first_token_seconds_count", (("model", MODEL),))] == 1
    assert samples[("llm_slots", ())] == 1
    assert samples[("llm_requests_deferred", ())] == 0
    assert samples[("llm_draft_tokens_total", ())] == 0  # the fake engine drafts nothing
    assert samples[("llm_draft_tokens_accepted_total", ())] == 0
    assert samples[("llm_requests_processing", ())] == 0  # counted up, and down again
    http = "llm_http_requests_total"
    assert samples[(http, (("method", "POST"), ("route", "/v1/completions"), ("status", "200")))]
    assert samples[(http, (("method", "GET"), ("route", "/metrics"), ("status", "403")))] == 1


async def test_queue_rejections_are_counted(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine(refuse=QueueFull(retry_after=2)))
    async with AsyncTestClient(app=app) as client:
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        refused = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1}, headers=admin
        )
        assert refused.status_code == 429
        text = (await client.get("/metrics", headers=admin)).text
    assert "llm_queue_rejections_total 1.0" in text


async def test_with_a_metrics_address_they_are_served_openly_there_and_not_here(
    tmp_path: Path,
) -> None:
    port = free_port()
    app = create_app(
        settings_for(tmp_path, APP_METRICS_LISTEN=f"127.0.0.1:{port}"), engine=FakeEngine()
    )
    async with AsyncTestClient(app=app) as client:
        admin = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        assert (await client.get("/metrics", headers=admin)).status_code == 404
        async with httpx.AsyncClient() as other:
            scraped = await other.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200
        assert "llm_slots 1.0" in scraped.text
    async with httpx.AsyncClient() as other:
        with pytest.raises(httpx.TransportError):  # stopped with the app
            await other.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


async def test_options_lists_every_method_of_a_path(client: AsyncTestClient[Any]) -> None:
    # Litestar 2 listed only one handler's methods (litestar-org/litestar#4169).
    answer = await client.options("/admin/users/someone")
    assert answer.status_code == 204
    assert answer.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
