"""Tool calling and structured outputs through the real client libraries, on the real SmolLM2
GGUF: the ``openai`` SDK (every ``tool_choice``, streamed or not, its helpers), LangChain,
openai-agents and instructor, unmodified but for ``base_url`` and ``api_key``.

SmolLM2's template knows no tool format, so these run the generic envelope; test_tools_native.py
runs a Hermes-style template.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.integration.support import MODEL_ID, RunningServer, streamed_completion

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def valid_calls(calls: Any, allowed: set[str]) -> list[str]:
    """The called names, each call's arguments checked against its tool's schema."""
    names = []
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        names.append(call.function.name)
    return names


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("choice", "allowed"),
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
)
def test_a_forced_call_is_always_valid(
    client: openai.OpenAI, choice: Any, allowed: set[str], stream: bool
) -> None:
    finished = 0
    for seed in range(4):
        params: dict[str, Any] = dict(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=400,  # room for the 8 calls a tiny model may repeat
            temperature=0.8,
            seed=seed,
        )
        try:
            if stream:
                completion = streamed_completion(client, **params)
            else:
                completion = client.chat.completions.create(**params)
        except openai.LengthFinishReasonError:
            # Eight calls with long strings can outgrow the suite's 512-token context (which
            # slots' cached prefixes, computed in other batches, make more or less likely):
            # the answer then ends as "length", as it should; its calls are not complete.
            continue
        (reply,) = completion.choices
        if reply.finish_reason == "length":
            continue  # as above (the SDK raises only when it parses)
        assert reply.finish_reason == "tool_calls", reply
        assert reply.message.content is None
        assert valid_calls(reply.message.tool_calls, allowed)
        finished += 1
    assert finished >= 2  # most forced calls end well within the context


def test_stop_sequences_never_cut_a_call(client: openai.OpenAI) -> None:
    """A stop sequence applies to text, not to a call the grammar holds."""
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        stop=['"', "}", ","],
        max_tokens=200,
    )
    (reply,) = completion.choices
    assert reply.finish_reason == "tool_calls", reply
    assert valid_calls(reply.message.tool_calls, set(SCHEMAS))


def test_parallel_calls_can_be_turned_off(client: openai.OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Weather and time in Paris and in Rome?"}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=200,
            seed=seed,
        )
        assert len(completion.choices[0].message.tool_calls or []) == 1


def test_none_never_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=24
    )
    (reply,) = completion.choices
    assert reply.message.tool_calls is None
    assert reply.message.content
    assert reply.finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_or_calls_validly(client: openai.OpenAI, stream: bool) -> None:
    params: dict[str, Any] = dict(
        model=MODEL_ID, messages=ASK, tools=TOOLS, max_tokens=200, temperature=0
    )
    if not stream:
        reply = client.chat.completions.create(**params).choices[0]
        content, calls, finish = (
            reply.message.content,
            reply.message.tool_calls,
            reply.finish_reason,
        )
    else:  # assembled by hand: the SDK's stream helper refuses a reply cut by max_tokens
        parts: list[str] = []
        arguments: dict[int, str] = {}
        names: dict[int, str | None] = {}
        finish = None
        for chunk in client.chat.completions.create(**params, stream=True):
            delta = chunk.choices[0].delta
            parts.append(delta.content or "")
            for call in delta.tool_calls or []:
                names[call.index] = call.function.name or names.get(call.index)
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
            finish = chunk.choices[0].finish_reason or finish
        content = "".join(parts) or None
        calls = [
            openai.types.chat.ChatCompletionMessageToolCall(
                id="call_x",
                type="function",
                function={"name": names[i], "arguments": arguments[i]},
            )
            for i in sorted(names)
        ]
    if calls:
        assert finish == "tool_calls"
        valid_calls(calls, set(SCHEMAS))
    else:
        assert content
        assert finish in ("stop", "length")


def test_a_streamed_call_arrives_as_openai_streams_it(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={
            "model": MODEL_ID,
            "messages": ASK,
            "tools": TOOLS,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 120,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=120,
    ) as response:
        chunks = [
            json.loads(line.removeprefix("data: "))
            for line in response.iter_lines()
            if line.startswith("data: {")
        ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    first, *rest = calls
    assert first["index"] == 0
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"]["name"] in SCHEMAS
    assert all(set(c) == {"index", "function"} for c in rest)
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    jsonschema.validate(json.loads(arguments), SCHEMAS[first["function"]["name"]])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_round_trip_call_result_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=200,
    )
    call = first.choices[0].message.tool_calls[0]
    history: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    final = client.chat.completions.create(
        model=MODEL_ID, messages=history, tools=TOOLS, tool_choice="none", max_tokens=40
    )
    assert final.choices[0].message.content
    assert final.choices[0].message.tool_calls is None


def test_legacy_functions_answer_with_function_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        max_tokens=200,
    )
    (reply,) = completion.choices
    assert reply.finish_reason == "function_call"
    assert reply.message.function_call is not None
    jsonschema.validate(json.loads(reply.message.function_call.arguments), SCHEMAS["get_weather"])


def test_n_choices_each_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required", n=2, max_tokens=400
    )
    assert len(completion.choices) == 2
    for reply in completion.choices:
        assert valid_calls(reply.message.tool_calls, set(SCHEMAS))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
            "messages[1].tool_call_id",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "{not json"},
                            }
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "strict": True,
                            "parameters": {
                                "type": "object",
                                "properties": {"n": {"type": "number", "multipleOf": 3}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_malformed_tools_and_histories_are_clear_400s(
    server: RunningServer, body: dict[str, Any], param: str
) -> None:
    request = {"model": MODEL_ID, "messages": ASK, "tools": TOOLS, "max_tokens": 8, **body}
    request = {k: v for k, v in request.items() if v is not None}
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=request,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param), error
    assert error["type"] == "invalid_request_error"


# --- structured outputs ------------------------------------------------------------------------


Line = Annotated[str, Field(max_length=60)]


class Poem(BaseModel):
    """A short poem (bounded, so that it fits the tests' max_tokens)."""

    title: str = Field(max_length=40)
    lines: list[Line] = Field(min_length=2, max_length=4)


def test_structured_output_always_parses_and_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"poem": {"type": "string"}},
        "required": ["poem"],
    }
    for seed in range(12):
        completion = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Write a poem of four lines about the sea."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "poem", "schema": schema},
            },
            seed=seed,
            temperature=0.7,
            max_tokens=80,
        )
        reply = completion.choices[0]
        if reply.finish_reason == "stop":
            jsonschema.validate(json.loads(reply.message.content or ""), schema)


def test_the_sdks_parse_helper_returns_the_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "A short poem about rain, with a title."}],
        response_format=Poem,
        max_tokens=300,
        temperature=0,
    )
    poem = completion.choices[0].message.parsed
    assert isinstance(poem, Poem)
    assert 2 <= len(poem.lines) <= 4


def test_the_sdks_pydantic_function_tool_parses_the_arguments(client: openai.OpenAI) -> None:
    class GetWeather(BaseModel):
        city: str = Field(max_length=40)

    completion = client.chat.completions.parse(
        model=MODEL_ID,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=400,  # room for the 8 calls a tiny model may repeat
    )
    call = completion.choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)
    final = streamed_completion(
        client,
        model=MODEL_ID,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=400,  # room for the 8 calls a tiny model may repeat
    )
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, GetWeather)


def test_a_streamed_parse_returns_the_model(client: openai.OpenAI) -> None:
    completion = streamed_completion(
        client,
        model=MODEL_ID,
        messages=[{"role": "user", "content": "A short poem about snow, with a title."}],
        response_format=Poem,
        max_tokens=300,
        temperature=0,
    )
    assert isinstance(completion.choices[0].message.parsed, Poem)


# --- other client libraries --------------------------------------------------------------------


def test_langchain_binds_tools_and_structures_output(server: RunningServer) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    chat = ChatOpenAI(
        model=MODEL_ID,
        base_url=f"{server.url}/v1",
        api_key=server.api_key,
        max_completion_tokens=300,
        temperature=0,
        max_retries=0,
    )
    message = chat.bind_tools([get_weather], tool_choice="any").invoke("Weather in Oslo?")
    assert message.tool_calls
    assert message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    for method in ("function_calling", "json_schema"):
        structured = chat.with_structured_output(Poem, method=method)
        poem = structured.invoke("A poem about trees.")
        assert isinstance(poem, Poem), method


def test_openai_agents_runs_an_agent_with_a_function_tool(server: RunningServer) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    called: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return f"It is sunny in {city}."

    model = OpenAIChatCompletionsModel(
        model=MODEL_ID,
        openai_client=openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0
        ),
    )
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=model,
        tools=[get_weather],
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, max_tokens=200, temperature=0
        ),
        # A 135M model does not reliably stop calling: the tool's answer is the agent's.
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Lisbon?", max_turns=4))
    assert len(called) == 1, "the agent called its tool"
    assert result.final_output == f"It is sunny in {called[0]}."


def test_instructor_in_its_default_tools_mode(server: RunningServer) -> None:
    import instructor

    class City(BaseModel):
        name: str = Field(max_length=40)
        country: str = Field(max_length=40)

    client = instructor.from_openai(
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    )
    city = client.chat.completions.create(
        model=MODEL_ID,
        response_model=City,
        messages=[{"role": "user", "content": "Paris is in France. Extract the city."}],
        # Greedy and one call: sampled, the tiny model may repeat its call until max_tokens.
        temperature=0,
        parallel_tool_calls=False,
        max_tokens=200,
        max_retries=0,
    )
    assert isinstance(city, City)
