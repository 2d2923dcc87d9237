"""OpenAI's Responses API through the ``openai`` SDK and openai-agents' default model, unmodified
but for ``base_url`` and ``api_key``, on the real SmolLM2 GGUF: create (plain, streamed, chained,
in the background), the per-user store (retrieve, input items, delete, privacy, a restart),
cancel, and a function tool round trip."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.integration.support import (
    ADMIN_PASSWORD,
    MODEL_ID,
    SERVER_ADMIN_PASSWORD,
    RunningServer,
    access_token,
    new_api_key,
    serving,
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_a_response_is_created_and_stored(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID,
        instructions="You are terse.",
        input="Name a colour.",
        max_output_tokens=12,
        temperature=0,
        metadata={"case": "plain"},
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.output[0].type == "message"
    assert response.usage is not None
    assert 0 < response.usage.output_tokens <= 12
    stored = client.responses.retrieve(response.id)
    assert stored.output_text == response.output_text
    assert stored.metadata == {"case": "plain"}
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_a_response_streams_its_events_in_order(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL_ID, input="Say hello.", max_output_tokens=12, stream=True
        )
    )
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert expected in types
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text
    with client.responses.stream(
        model=MODEL_ID, input="Say hi.", max_output_tokens=100, temperature=0
    ) as stream:
        for _ in stream:
            pass
        assert stream.get_final_response().output_text


def test_a_conversation_continues_from_the_stored_response(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL_ID, input="My name is Ada. Say hello.", max_output_tokens=12
    )
    second = client.responses.create(
        model=MODEL_ID,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=12,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert first.usage is not None
    # The earlier turn and its answer are in the prompt, and were not computed again: the
    # slot's cache held them (the follow-up's rendering reproduces the tokens).
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL_ID, previous_response_id="resp_nope", input="x")


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    params: dict[str, Any] = dict(
        model=MODEL_ID,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=100,
        # Greedy: a sampled call's arguments sometimes led the greedy answer after the tool's
        # output to be nothing at all (an empty output, once in a full run).
        temperature=0,
    )
    if stream:
        with client.responses.stream(**params) as events:
            for _ in events:
                pass
            response = events.get_final_response()
    else:
        response = client.responses.create(**params)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    final = client.responses.create(
        model=MODEL_ID,
        previous_response_id=response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny."}],
        tools=[WEATHER],
        max_output_tokens=40,
        temperature=0,
    )
    assert final.status in ("completed", "incomplete")
    assert final.output


def test_the_whole_history_can_be_sent_instead(client: openai.OpenAI) -> None:
    """As a stateless client (store: false) sends it: earlier output items as input."""
    first = client.responses.create(
        model=MODEL_ID,
        input="What is the weather in Oslo?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=100,
        store=False,
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    call = first.output[0]
    assert call.type == "function_call"
    history: list[Any] = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        call.model_dump(),
        {"type": "function_call_output", "call_id": call.call_id, "output": "Cold."},
    ]
    final = client.responses.create(
        model=MODEL_ID, input=history, tools=[WEATHER], max_output_tokens=100, store=False
    )
    assert final.output or final.status == "incomplete"  # a call cut short is left out


def test_structured_output_with_text_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 20}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL_ID,
        input="Name a colour.",
        text={"format": {"type": "json_schema", "name": "c", "schema": schema, "strict": True}},
        max_output_tokens=40,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_a_background_response_is_polled_or_cancelled(client: openai.OpenAI) -> None:
    done = client.responses.create(
        model=MODEL_ID, input="Say hi.", max_output_tokens=8, background=True
    )
    assert done.status in ("queued", "in_progress")
    deadline = time.monotonic() + 120
    while done.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        done = client.responses.retrieve(done.id)
    assert done.status in ("completed", "incomplete")
    assert done.output_text
    long = client.responses.create(
        model=MODEL_ID,
        input="Write a very long story about the sea.",
        max_output_tokens=400,
        background=True,
    )
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    # Its slot is free again: a request goes through at once.
    assert client.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=2).output


def test_stored_responses_are_private(client: openai.OpenAI, server: RunningServer) -> None:
    mine = client.responses.create(model=MODEL_ID, input="Secret.", max_output_tokens=2)
    admin = access_token(server.url, "admin", SERVER_ADMIN_PASSWORD)
    created = httpx.post(
        f"{server.url}/admin/users",
        json={"username": "eve-responses", "password": "eve-password-1"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    other = openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key=new_api_key(
            server.url, access_token(server.url, "eve-responses", "eve-password-1"), "eve"
        ),
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model=MODEL_ID, previous_response_id=mine.id, input="x")
    assert client.responses.retrieve(mine.id).id == mine.id


def test_stored_responses_survive_a_restart(tmp_path: Path, model_file: Path) -> None:
    env = {"APP_MODEL_PATH": str(model_file), "APP_MODEL_NAME": MODEL_ID}
    with serving(tmp_path, **env) as (url, _):
        key = new_api_key(url, access_token(url, "admin", ADMIN_PASSWORD), "t")
        first = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        created = first.responses.create(model=MODEL_ID, input="Hello.", max_output_tokens=4)
    with serving(tmp_path, **env) as (url, _):
        again = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        assert again.responses.retrieve(created.id).output_text == created.output_text
        follow = again.responses.create(
            model=MODEL_ID, previous_response_id=created.id, input="Again.", max_output_tokens=4
        )
        assert follow.output


def test_openai_agents_default_model_runs_an_agent_with_a_function_tool(
    server: RunningServer,
) -> None:
    from agents import (
        Agent,
        ModelSettings,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    called: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return f"It is sunny in {city}."

    # The SDK's default: a model named by a string runs on the Responses API.
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0),
        use_for_tracing=False,
    )
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=MODEL_ID,
        tools=[get_weather],
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, max_tokens=200, temperature=0
        ),
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Lisbon?", max_turns=4))
    assert len(called) == 1, "the agent called its tool"
    assert result.final_output == f"It is sunny in {called[0]}."
