"""Anthropic's Messages API through the ``anthropic`` SDK, unmodified but for ``base_url`` and
``api_key``, on the real SmolLM2 GGUF: create, stream, count_tokens, a tool round trip, errors."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.integration.support import MODEL_ID, RunningServer

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def claude(server: RunningServer) -> anthropic.Anthropic:
    """The official SDK: it sends the API key as ``x-api-key``."""
    return anthropic.Anthropic(base_url=server.url, api_key=server.api_key, max_retries=0)


def test_a_message_is_created_as_anthropic_shapes_it(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=12,
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
        extra_body={"temperature": 0},
    )
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL_ID
    (block,) = message.content
    assert block.type == "text"
    assert block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 12
    counted = claude.messages.count_tokens(
        model=MODEL_ID,
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
    )
    assert counted.input_tokens == message.usage.input_tokens


def test_a_stop_sequence_is_named(claude: anthropic.Anthropic) -> None:
    params: dict[str, Any] = dict(
        model=MODEL_ID, max_tokens=30, messages=[{"role": "user", "content": "Tell a story."}]
    )
    free = claude.messages.create(**params, extra_body={"temperature": 0})
    text = free.content[0].text
    words = text.split()
    assert len(words) > 3, text
    stop = words[len(words) // 2]
    stopped = claude.messages.create(**params, extra_body={"temperature": 0}, stop_sequences=[stop])
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == stop
    assert stop not in stopped.content[0].text


def test_a_message_streams_as_anthropic_streams_it(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL_ID, max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        types = [event.type for event in stream]
        message = stream.get_final_message()
    assert types[0] == "message_start"
    assert "content_block_start" in types
    assert "content_block_delta" in types
    assert types[-2:] == ["message_delta", "message_stop"] or types[-1] == "message_stop"
    assert message.content[0].type == "text"
    assert message.usage.output_tokens > 0
    assert message.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(claude: anthropic.Anthropic, stream: bool) -> None:
    params: dict[str, Any] = dict(
        model=MODEL_ID,
        max_tokens=120,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    if stream:
        with claude.messages.stream(**params) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**params)
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24."}],
        },
    ]
    final = claude.messages.create(
        model=MODEL_ID,
        max_tokens=30,
        messages=history,
        tools=[WEATHER],
        extra_body={"temperature": 0},
    )
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert final.content or final.stop_reason == "max_tokens"  # a call cut short is left out


def test_a_named_tool_is_used(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=120,
        messages=ASK,
        tools=[WEATHER, {**WEATHER, "name": "get_time"}],
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert {b.name for b in message.content if b.type == "tool_use"} == {"get_time"}


def test_errors_come_in_anthropics_shape(
    claude: anthropic.Anthropic, server: RunningServer
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL_ID,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}],
                }
            ],
        )
    assert bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=8, messages=ASK)
    wrong = anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=MODEL_ID, max_tokens=8, messages=ASK)
    missing = httpx.post(f"{server.url}/v1/messages", json={"model": MODEL_ID}, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


def test_a_bearer_token_works_too(server: RunningServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, auth_token=server.api_key, max_retries=0)
    message = claude.messages.create(model=MODEL_ID, max_tokens=4, messages=ASK)
    assert message.usage.output_tokens > 0


def test_output_config_format_gives_json_of_the_schema(claude: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 20}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=40,
        messages=[{"role": "user", "content": "Name a colour."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_a_prefilled_reply_is_continued(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL_ID,
        max_tokens=8,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
        extra_body={"temperature": 0},
    )
    text = message.content[0].text
    assert text
    assert not text.startswith("The capital")  # only what follows the prefill
