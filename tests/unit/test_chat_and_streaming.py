"""Chat completions and streaming over a fake engine: SSE framing, errors, refusals."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from litestar.testing import AsyncTestClient

from app.errors import QueueFull
from app.factory import build_services, create_app
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

MODEL = "tinyllama-1.1b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "count"}]}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def client(engine: FakeEngine, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = settings_for(tmp_path, APP_MAX_REQUEST_BYTES="2048")
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        yield client


def sdk(client: AsyncTestClient[Any]) -> openai.AsyncOpenAI:
    """The real openai SDK, talking to the in-process app."""
    token = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(
        base_url="http://testserver.local/v1", api_key=token, http_client=client, max_retries=0
    )


def events(body: str) -> list[str]:
    """The data of each server-sent event, checking the framing on the way."""
    assert body.endswith("\n\n")
    blocks = body[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
    return [block.removeprefix("data: ") for block in blocks]


async def test_chat_completion_has_openai_shape(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "usage", "system_fingerprint"
    ]  # fmt: skip
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " one two", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"]["completion_tokens"] == 2


async def test_messages_reach_the_template_as_text(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}],
                },
                {"role": "assistant", "content": None},
            ],
        },
    )
    (chat,) = engine.chats
    assert [(m.role, m.content) for m in chat] == [
        ("system", "be brief"),
        ("user", "hello"),
        ("assistant", ""),
    ]


async def test_max_completion_tokens_wins_over_max_tokens(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    await client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 3, "max_completion_tokens": 1}
    )
    assert engine.calls[0][1].max_tokens == 1


async def test_json_modes_send_a_grammar(client: AsyncTestClient[Any], engine: FakeEngine) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for fmt in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    ):
        response = await client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt})
        assert response.status_code == 200
    assert engine.calls[0][1].grammar is not None
    assert engine.calls[1][1].grammar is not None
    assert engine.calls[1][1].grammar != engine.calls[0][1].grammar
    text = await client.post(
        "/v1/chat/completions", json={**CHAT, "response_format": {"type": "text"}}
    )
    assert text.status_code == 200
    assert engine.calls[2][1].grammar is None


async def test_streamed_chat_is_framed_as_openai_does(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {(c["id"], c["created"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert reasons == [None] * (len(chunks) - 2) + ["stop"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == (
        " one two three four"
    )
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


async def test_without_include_usage_no_chunk_carries_usage(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a", "stream": True}
    )
    chunks = [json.loads(d) for d in events(response.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]


async def test_sdk_reads_the_streams(client: AsyncTestClient[Any]) -> None:
    api = sdk(client)
    stream = await api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(parts) == " one two three four"
    assert usage is not None
    assert usage.completion_tokens == 4
    completion = await api.completions.create(model=MODEL, prompt="x", stream=True, n=2)
    texts: dict[int, str] = {}
    async for chunk in completion:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: " one two three four", 1: " one two three four"}


async def test_an_error_after_the_stream_began_reaches_the_sdk(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine(fail_after=2))
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        raw = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        data = events(raw.text)
        assert "[DONE]" not in data
        error = json.loads(data[-1])["error"]
        assert error["type"] == "server_error"
        assert "broke" not in error["message"], "internal details stay in the log"
        stream = await sdk(client).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_errors_found_before_generating_are_plain_http_errors_when_streaming(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "w " * 100}],
            "stream": True,
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    missing = await client.post(
        "/v1/completions", json={"model": "gpt-4", "prompt": "x", "stream": True}
    )
    assert missing.status_code == 404
    assert engine.calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": MODEL, "messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ],
            },
            "messages[0].content[0].type",
        ),
        (
            {**CHAT, "tools": [{"type": "function", "function": {"name": "f g"}}]},
            "tools[0].function.name",
        ),
        ({**CHAT, "functions": [{"name": "f"}], "tools": []}, "functions"),
        ({**CHAT, "tool_choice": "required"}, "tool_choice"),
        ({**CHAT, "modalities": ["text", "audio"]}, "modalities"),
        ({**CHAT, "web_search_options": {}}, "web_search_options"),
        ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
        ({**CHAT, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                **CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
                },
            },
            "response_format.json_schema.schema",
        ),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**CHAT, "n": 17}, "n"),
        ({**CHAT, "temperature": -0.1}, "temperature"),
    ],
)
async def test_chat_refusals_name_the_field(
    client: AsyncTestClient[Any], engine: FakeEngine, body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert engine.calls == []


async def test_ignorable_openai_fields_are_accepted(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            **CHAT,
            "user": "u1",
            "store": False,
            "metadata": {"a": "b"},
            "service_tier": "auto",
            "parallel_tool_calls": True,
            "tool_choice": "none",
            "tools": [],
            "modalities": ["text"],
        },
    )
    assert response.status_code == 200, response.text


async def test_models_can_be_looked_up_one_by_one(client: AsyncTestClient[Any]) -> None:
    found = await client.get(f"/v1/models/{MODEL}")
    assert found.json()["id"] == MODEL
    missing = await client.get("/v1/models/gpt-4")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_tokenizer_routes(client: AsyncTestClient[Any]) -> None:
    tokens = (await client.post("/tokenize", json={"content": "ab cde"})).json()
    assert tokens == {"tokens": [2, 3]}
    text = await client.post("/detokenize", json={"tokens": [2, 3]})
    assert text.json() == {"content": "xx xxx"}
    for bad in ([-1], [1000], ["a"]):
        response = await client.post("/detokenize", json={"tokens": bad})
        assert response.status_code == 400
        assert response.json()["error"]["param"].startswith("tokens")


async def test_an_oversized_body_is_a_413_in_openai_shape(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_full_queue_is_a_429_with_retry_after(tmp_path: Path, stream: bool) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine(refuse=QueueFull(retry_after=7)))
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
        with pytest.raises(openai.RateLimitError):
            await (
                sdk(client)
                .with_options(max_retries=0)
                .chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            )


async def test_a_stopping_server_answers_503(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    services = build_services(settings, engine=FakeEngine())
    async with AsyncTestClient(app=create_app(settings, services)) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        services.host.stop_admitting()
        health = await client.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "stopping")
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "shutting_down"
