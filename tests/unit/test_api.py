"""The HTTP surface over a fake engine: shapes, defaults, and OpenAI-style errors."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate

from app.factory import create_app
from app.inference.engine import EngineConfig
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

MODEL = "tinyllama-1.1b"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def client(engine: FakeEngine, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = settings_for(tmp_path, APP_MAX_LENGTH="3", APP_TEMPERATURE="0.5")
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        yield client


def assert_openai_error(
    body: dict[str, Any], *, param: str | None, code: str | None = None
) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


async def test_completion_has_openai_shape_and_honest_usage(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "count to four", "max_tokens": 10}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert body["choices"] == [
        {"text": " one two three four", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_server_defaults_apply_when_the_request_omits_them(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert response.json()["choices"][0] == {
        "text": " one two three",
        "index": 0,
        "logprobs": None,
        "finish_reason": "length",
    }
    params = engine.calls[0][1]
    assert (params.max_tokens, params.temperature, params.top_p) == (3, 0.5, 1.0)


async def test_request_parameters_reach_the_engine(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "hi",
            "max_tokens": 7,
            "temperature": 0,
            "top_p": 0.9,
            "seed": 42,
            "stop": "three",
            "presence_penalty": 0.5,
            "user": "someone",
            "some_future_openai_field": True,
        },
    )
    params = engine.calls[0][1]
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (7, 0, 0.9, 42)
    assert params.ignore_eos is False
    assert params.stop == ("three",)
    assert params.presence_penalty == 0.5


async def test_llama_cpp_sampling_options_reach_the_engine(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    await client.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "hi",
            "top_k": 5,
            "min_p": 0.2,
            "repeat_penalty": 1.3,
            "ignore_eos": True,
        },
    )
    params = engine.calls[0][1]
    assert (params.top_k, params.min_p, params.repeat_penalty, params.ignore_eos) == (
        5,
        0.2,
        1.3,
        True,
    )


async def test_prompts_may_be_token_ids(client: AsyncTestClient[Any], engine: FakeEngine) -> None:
    one = await client.post("/v1/completions", json={"model": MODEL, "prompt": [5, 6, 7]})
    assert one.status_code == 200, one.text
    assert engine.calls[-1][0] == [5, 6, 7]
    assert one.json()["usage"]["prompt_tokens"] == 3
    several = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": [[1, 2], [3]], "max_tokens": 1}
    )
    assert [len(c["text"]) > 0 for c in several.json()["choices"]] == [True, True]
    assert [call[0] for call in engine.calls[-2:]] == [[1, 2], [3]]
    for bad in (["text", 5], [5, [6]], [[1], "text"], [-1], [[1000]]):
        refused = await client.post("/v1/completions", json={"model": MODEL, "prompt": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "prompt"


async def test_stop_text_is_not_returned(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 10, "stop": [" three", "zzz"]},
    )
    choice = response.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (" one two", "stop")


async def test_a_list_of_prompts_gets_one_choice_each_in_order(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": ["a", "b c", "d e f"], "max_tokens": 1},
    )
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


async def test_n_gives_distinct_seeds_per_choice(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "n": 3, "seed": 10}
    )
    assert len(response.json()["choices"]) == 3
    assert sorted(params.seed or 0 for _, params in engine.calls) == [10, 11, 12]


async def test_too_many_choices_in_one_request_are_refused(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ["a"] * 5, "n": 16}
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), param="n")
    assert engine.calls == []


async def test_models_lists_the_served_model(client: AsyncTestClient[Any]) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (MODEL, "model", "llm-service")
    ]
    assert isinstance(body["data"][0]["created"], int)


async def test_health_is_ok_when_the_engine_is_ready(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_unknown_model_is_404_model_not_found(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
    assert response.status_code == 404
    assert_openai_error(response.json(), param="model", code="model_not_found")
    assert "gpt-4" in response.json()["error"]["message"]


async def test_prompt_longer_than_the_context_is_refused_with_both_numbers(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "word " * 80, "max_tokens": 1}
    )
    assert response.status_code == 400
    body = response.json()
    assert_openai_error(body, param="prompt", code="context_length_exceeded")
    assert "64" in body["error"]["message"]
    assert "80" in body["error"]["message"]
    assert engine.calls == [], "nothing may be generated for a refused request"


async def test_one_oversized_prompt_in_a_list_refuses_the_whole_request(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ["fine", "word " * 80]}
    )
    assert response.status_code == 400
    assert engine.calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "prompt": "hi", "stop": [1]}, "stop[0]"),
        ({"model": MODEL, "prompt": "hi", "seed": 2**70}, "seed"),
        ({"model": MODEL, "prompt": "hi", "seed": 1.5}, "seed"),
        ({"model": MODEL, "prompt": "hi", "n": 0}, "n"),
        ({"model": MODEL, "prompt": "hi", "n": 100}, "n"),
        ({"model": MODEL, "prompt": 42}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": ""}, "prompt"),
        ({"model": MODEL}, "prompt"),
        ({"prompt": "hi"}, "model"),
        (
            {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": MODEL, "prompt": "hi", "stream": "yes"}, "stream"),
        ({"model": MODEL, "prompt": "hi", "top_k": -1}, "top_k"),
        ({"model": MODEL, "prompt": "hi", "min_p": 1.5}, "min_p"),
        ({"model": MODEL, "prompt": "hi", "repeat_penalty": 0}, "repeat_penalty"),
        ({"model": MODEL, "prompt": "hi", "presence_penalty": 2.5}, "presence_penalty"),
        ({"model": MODEL, "prompt": "hi", "frequency_penalty": -3}, "frequency_penalty"),
        ({"model": MODEL, "prompt": "hi", "logprobs": 21}, "logprobs"),
        ({"model": MODEL, "prompt": "hi", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"model": MODEL, "prompt": "hi", "logit_bias": {"5": 101}}, "logit_bias"),
        ({"model": MODEL, "prompt": "hi", "echo": True}, "echo"),
        ({"model": MODEL, "prompt": "hi", "suffix": "end"}, "suffix"),
        ({"model": MODEL, "prompt": "hi", "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"model": MODEL, "prompt": "hi", "best_of": 3}, "best_of"),
    ],
)
async def test_bad_fields_are_a_400_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), param=param)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"null", b'"text"', b"\xff\xfe", b""],
)
async def test_malformed_bodies_are_a_400(client: AsyncTestClient[Any], content: bytes) -> None:
    response = await client.post(
        "/v1/completions", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), param=None)


async def test_unknown_route_and_wrong_method_are_openai_errors(
    client: AsyncTestClient[Any],
) -> None:
    for path in ("/v1/nothing-here", "/completions", "/favicon.ico", "/docs/extra"):
        missing = await client.get(path)
        assert missing.status_code == 404, path
        assert_openai_error(missing.json(), param=None)
    misrouted = await client.post("/completions", json={"model": MODEL, "prompt": "hi"})
    assert misrouted.status_code == 404
    wrong = await client.delete("/v1/models")
    assert wrong.status_code == 405
    assert_openai_error(wrong.json(), param=None)


async def test_docs_pages_load_their_assets_from_the_service_not_a_cdn(
    client: AsyncTestClient[Any],
) -> None:
    for path in ("/docs", "/redoc"):
        page = (await client.get(path)).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert sources, path
        assert all(s.startswith("/docs-assets/") for s in sources), sources
        for source in sources:
            asset = await client.get(source)  # no credentials: the docs are public
            assert asset.status_code == 200, source
            assert "max-age=86400" in asset.headers["cache-control"]
    missing = await client.get("/docs-assets/nothing.js")
    assert missing.status_code == 404
    assert_openai_error(missing.json(), param=None)


async def test_docs_and_schema_are_served(client: AsyncTestClient[Any]) -> None:
    for path in ("/docs", "/redoc"):
        response = await client.get(path)
        assert response.status_code == 200
        assert "text/html" in response.headers["content-type"]
    root = await client.get("/")  # the console, which links to the docs
    assert root.status_code == 200
    assert 'href="/docs"' in root.text
    schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "llm-service"
    operations = {
        (path, method): op for path, item in schema["paths"].items() for method, op in item.items()
    }
    assert set(operations) >= {
        ("/v1/completions", "post"),
        ("/v1/models", "get"),
        ("/health", "get"),
    }
    for op in operations.values():
        assert op.get("summary"), op
    # What Swagger's Authorize button needs: the password flow at /token (scopes are required).
    scheme = schema["components"]["securitySchemes"]["BearerToken"]
    assert scheme["flows"]["password"] == {"tokenUrl": "/token", "scopes": {}}
    token_body = operations[("/token", "post")]["requestBody"]["content"]
    assert list(token_body) == ["application/x-www-form-urlencoded"]
    completions = operations[("/v1/completions", "post")]
    assert "requestBody" in completions
    assert {"200", "400", "401", "404", "503"} <= set(completions["responses"])


async def wait_for_status(client: AsyncTestClient[Any], status: str) -> dict[str, Any]:
    for _ in range(500):
        body: dict[str, Any] = (await client.get("/health")).json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"health never reported {status!r}")


async def test_the_openapi_document_is_valid(client: AsyncTestClient[Any]) -> None:
    """Swagger UI, ReDoc and client generators need a document that follows the specification."""
    validate((await client.get("/openapi.json")).json())


async def test_health_reports_each_state_until_ready(tmp_path: Path) -> None:
    release = threading.Event()

    async def slow_loader(path: Path, config: EngineConfig) -> FakeEngine:
        await asyncio.to_thread(release.wait, 10)
        return FakeEngine()

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    settings = settings_for(tmp_path, APP_MODEL_PATH=str(model))
    async with AsyncTestClient(app=create_app(settings, engine_loader=slow_loader)) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        await wait_for_status(client, "loading")
        assert (await client.get("/health")).status_code == 503
        waiting = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert waiting.status_code == 503
        assert waiting.json()["error"]["code"] == "model_not_ready"
        assert waiting.headers["retry-after"]
        release.set()
        await wait_for_status(client, "ok")
        assert (await client.get("/health")).status_code == 200


async def test_health_reports_a_failed_model_with_the_reason(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, APP_MODEL_PATH=str(tmp_path / "missing.gguf"))
    async with AsyncTestClient(app=create_app(settings)) as client:
        await wait_for_status(client, "failed")
        response = await client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "failed"
        assert "missing.gguf" in body["error"]
        assert "APP_MODEL_PATH" in body["error"]


async def test_closing_the_app_closes_the_engine(engine: FakeEngine, tmp_path: Path) -> None:
    async with AsyncTestClient(app=create_app(settings_for(tmp_path), engine=engine)):
        pass
    assert engine.closed
