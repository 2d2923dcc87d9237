"""Tool calling above the engine: what the engine is asked for (grammar, triggers, tools in the
prompt) and how its text becomes tool calls, whole and streamed, over a scripted engine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.factory import create_app
from app.inference.tool_formats import GENERIC, HERMES, LLAMA3, MISTRAL, ToolFormat
from tests.unit.fakes import FakeEngine
from tests.unit.support import (
    ADMIN,
    ADMIN_PASSWORD,
    admin_client,
    bearer,
    login,
    settings_for,
    weather_call_words,
)

MODEL = "tinyllama-1.1b"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL_WORDS = weather_call_words("Paris")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(words=("Sure.", *CALL_WORDS))


@pytest.fixture
async def client(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with admin_client(tmp_path, engine) as client:
        yield client


def chat(**body: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 50,
        **body,
    }


async def test_auto_gives_a_lazy_grammar_and_reads_the_call(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post("/v1/chat/completions", json=chat(tools=[TOOL]))
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Sure."
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    params = engine.calls[-1][1]
    assert params.grammar is not None
    assert '"\\"get_weather\\""' in params.grammar
    assert params.grammar_opening == GENERIC.opening_regex
    assert [t.name for t in engine.tools[-1]] == ["get_weather"]


async def test_required_gives_a_grammar_from_the_start(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    await client.post("/v1/chat/completions", json=chat(tools=[TOOL], tool_choice="required"))
    params = engine.calls[-1][1]
    assert params.grammar is not None
    assert params.grammar_opening is None


async def test_none_describes_no_tool_and_reads_no_call(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat(tools=[TOOL], tool_choice="none")
    )
    message = response.json()["choices"][0]["message"]
    assert "tool_calls" not in message
    assert message["content"].startswith(" Sure.")
    assert engine.calls[-1][1].grammar is None
    assert engine.tools[-1] == []


async def test_a_streamed_call_comes_as_openai_streams_it(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/v1/chat/completions", json=chat(tools=[TOOL], stream=True))
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content.strip() == "Sure."
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(c["function"].get("arguments", "") for c in calls)) == {
        "city": "Paris"
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_legacy_functions_are_answered_with_function_call(
    client: AsyncTestClient[Any],
) -> None:
    body = chat(functions=[TOOL["function"]], function_call={"name": "get_weather"})
    message = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    assert message["finish_reason"] == "function_call"
    assert message["message"]["function_call"]["name"] == "get_weather"
    assert "tool_calls" not in message["message"]


async def test_a_history_with_calls_and_results_reaches_the_engine(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = await client.post("/v1/chat/completions", json=chat(messages=messages, tools=[TOOL]))
    assert response.status_code == 200, response.text
    history = engine.chats[-1]
    assert history[1].tool_calls[0].name == "get_weather"
    assert history[2].role == "tool"
    assert history[2].name == "get_weather"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [("not json", "must be a JSON object"), ('{"a": ' + "[" * 100_000, "nest too deeply")],
)
async def test_past_call_arguments_that_are_no_json_object_are_a_400(
    client: AsyncTestClient[Any], arguments: str, says: str
) -> None:
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]
    response = await client.post("/v1/chat/completions", json=chat(messages=messages, tools=[TOOL]))
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


async def test_a_json_answer_that_could_not_be_told_from_a_llama3_call_is_refused(
    tmp_path: Path,
) -> None:
    class Llama3Engine(FakeEngine):
        @property
        def tool_format(self) -> ToolFormat:
            return LLAMA3

    app = create_app(settings_for(tmp_path), engine=Llama3Engine())
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        body = chat(tools=[TOOL], response_format={"type": "json_object"})
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "response_format"
        forced = await client.post("/v1/chat/completions", json={**body, "tool_choice": "required"})
        assert forced.status_code == 200, forced.text


def test_mistral_call_ids_are_the_nine_characters_its_template_checks() -> None:
    ids = {MISTRAL.call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 9 and i.isalnum() for i in ids)
    assert GENERIC.call_id().startswith("call_")


async def test_none_bans_a_native_formats_own_call_token(tmp_path: Path) -> None:
    class HermesEngine(FakeEngine):
        @property
        def tool_format(self) -> ToolFormat:
            return HERMES

        async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
            return [777] if text == "<tool_call>" else await super().tokenize(text)

    engine = HermesEngine(words=CALL_WORDS)
    app = create_app(settings_for(tmp_path), engine=engine)
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        await client.post("/v1/chat/completions", json=chat(tools=[TOOL], tool_choice="none"))
        assert (777, float("-inf")) in engine.calls[-1][1].logit_bias
        await client.post("/v1/chat/completions", json=chat(tools=[TOOL]))
        assert (777, float("-inf")) not in engine.calls[-1][1].logit_bias
