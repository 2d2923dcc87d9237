"""Anthropic's Messages API above the engine: what the chat machinery is asked, the shape of the
answers, the events of a stream, and errors in Anthropic's shape, over a scripted engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.anthropic.protocol import MessagesRequest
from app.anthropic.serving import _with_pings, chat_request
from app.openai.protocol_tools import NamedToolChoice
from tests.unit.fakes import FakeEngine
from tests.unit.support import (
    admin_client,
    weather_call_words,
)

MODEL = "tinyllama-1.1b"
TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL_WORDS = weather_call_words("Oslo")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(words=("Sure.", *CALL_WORDS))


@pytest.fixture
async def client(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with admin_client(tmp_path, engine) as client:
        # As the anthropic SDK authenticates: the same credential in x-api-key.
        client.headers["x-api-key"] = client.headers.pop("Authorization").removeprefix("Bearer ")
        yield client


def body(**fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        **fields,
    }


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        found.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return found


def test_a_conversation_becomes_the_chat_request_that_asks_the_same() -> None:
    request = msgspec.convert(
        body(
            system=[{"type": "text", "text": "Be brief."}],
            messages=[
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            top_k=5,
        ),
        MessagesRequest,
    )
    chat = chat_request(request)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assert chat.messages[2].content == "Let me look."
    assert chat.messages[2].tool_calls[0].function.arguments == "{}"  # type: ignore[index]
    assert chat.messages[3].tool_call_id == "t1"
    assert isinstance(chat.tool_choice, NamedToolChoice)
    assert chat.parallel_tool_calls is False
    assert chat.stop == ["END"]
    assert chat.top_k == 5
    assert chat.max_tokens == 50


async def test_a_tool_use_is_answered_in_blocks(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/messages", json=body(tools=[TOOL]))
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["stop_reason"] == "tool_use"
    text, use = message["content"]
    assert text == {"type": "text", "text": "Sure."}
    assert use["type"] == "tool_use"
    assert use["name"] == "get_weather"
    assert use["input"] == {"city": "Oslo"}


async def test_a_stream_sends_anthropics_events_in_order(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/messages", json=body(tools=[TOOL], stream=True))
    sent = events(response.text)
    names = [name for name, _ in sent]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in sent)
    starts = [data["content_block"] for name, data in sent if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["text", "tool_use"]
    arguments = "".join(
        data["delta"]["partial_json"]
        for name, data in sent
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(arguments) == {"city": "Oslo"}
    assert sent[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("fields", "status", "error_type"),
    [
        ({"max_tokens": None}, 400, "invalid_request_error"),
        ({"messages": []}, 400, "invalid_request_error"),  # a field named as a dependency
        ({"messages": None}, 400, "invalid_request_error"),
        ({"model": "nope"}, 404, "not_found_error"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, 400, "invalid_request_error"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "x", "content": "1"}],
                    }
                ]
            },
            400,
            "invalid_request_error",
        ),
    ],
)
async def test_errors_come_in_anthropics_shape(
    client: AsyncTestClient[Any], fields: dict[str, Any], status: int, error_type: str
) -> None:
    request = {k: v for k, v in body(**fields).items() if v is not None}
    response = await client.post("/v1/messages", json=request)
    assert response.status_code == status, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == error_type
    assert set(response.json()["error"]) == {"type", "message"}


async def test_openai_routes_keep_openais_shape(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert set(response.json()) == {"error"}


async def test_count_tokens_counts_the_rendered_prompt(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post("/v1/messages/count_tokens", json=body(max_tokens=None))
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0
    assert engine.calls == []  # nothing generated


async def test_a_quiet_stream_gets_pings() -> None:
    async def slow() -> AsyncGenerator[str]:
        yield "a"
        await asyncio.sleep(0.25)
        yield "b"

    seen = [item async for item in _with_pings(slow(), 0.1)]
    assert seen[0] == "a"
    assert seen[-1] == "b"
    assert None in seen


async def test_a_final_assistant_turn_is_continued(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": [{"type": "text", "text": "The colour is"}]},
    ]
    response = await client.post("/v1/messages", json=body(messages=messages))
    assert response.status_code == 200, response.text
    assert engine.prefills[-1] == "The colour is"
    assert [m.role for m in engine.chats[-1]] == ["user"]
    counted = await client.post(
        "/v1/messages/count_tokens", json=body(messages=messages, max_tokens=None)
    )
    assert engine.prefills[-1] == "The colour is"
    assert counted.json()["input_tokens"] > 0
    messages[-1] = {"role": "assistant", "content": "The colour is "}
    trailing = await client.post("/v1/messages", json=body(messages=messages))
    assert trailing.status_code == 400
    assert "trailing whitespace" in trailing.json()["error"]["message"]
