"""A catalogue of malformed requests: each gets a clear 4xx in OpenAI's error shape, never a 5xx.

Over a fake engine with a 64-token context; grammars and JSON schemas are compiled for real."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.factory import create_app
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

MODEL = "tinyllama-1.1b"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]


def tool(parameters: Any, *, strict: bool | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": "f", "parameters": parameters}
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def nested_all_of(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"allOf": [schema]}
    return schema


@dataclass
class Bad:
    """One malformed request and what it must get."""

    name: str
    path: str
    body: Any = None  # JSON, unless raw is given
    raw: bytes | None = None
    content_type: str = "application/json"
    method: str = "POST"
    status: int = 400
    param: str | type[Any] | None = Any  # Any: not checked
    code: str | type[Any] | None = Any
    headers: dict[str, str] = field(default_factory=dict)


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "hello there", **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **fields}


CATALOGUE = [
    # The body itself
    Bad("not JSON", COMPLETIONS, raw=b'{"model": '),
    Bad("a JSON array", COMPLETIONS, body=[completion()]),
    Bad("a JSON string", COMPLETIONS, body="prompt"),
    Bad(
        "invalid UTF-8",
        COMPLETIONS,
        raw=b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff\xfe"}',
    ),
    Bad(
        "deeply nested JSON",
        COMPLETIONS,
        raw=b'{"model": "m", "prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    ),
    Bad(
        "text/plain",
        COMPLETIONS,
        raw=json.dumps(completion()).encode(),
        content_type="text/plain",
        status=415,
    ),
    Bad(
        "form-encoded",
        COMPLETIONS,
        raw=b"model=m&prompt=hi",
        content_type="application/x-www-form-urlencoded",
        status=415,
    ),
    Bad(
        "a body over APP_MAX_REQUEST_BYTES",
        COMPLETIONS,
        body=completion(prompt="x " * 40_000),
        status=413,
    ),
    Bad("an empty body", COMPLETIONS, raw=b""),
    # model
    Bad("no model", COMPLETIONS, body={"prompt": "hi"}, param="model"),
    Bad("model is a number", COMPLETIONS, body=completion(model=7), param="model"),
    Bad(
        "unknown model",
        COMPLETIONS,
        body=completion(model="gpt-9"),
        status=404,
        param="model",
        code="model_not_found",
    ),
    Bad("unknown model in chat", CHAT, body=chat(model=""), status=404, code="model_not_found"),
    # prompt
    Bad("no prompt", COMPLETIONS, body={"model": MODEL}, param="prompt"),
    Bad("prompt is an object", COMPLETIONS, body=completion(prompt={"text": "hi"}), param="prompt"),
    Bad("empty prompt", COMPLETIONS, body=completion(prompt=""), param="prompt"),
    Bad(
        "a list with an empty prompt",
        COMPLETIONS,
        body=completion(prompt=["hi", ""]),
        param="prompt",
    ),
    Bad(
        "a prompt longer than the context",
        COMPLETIONS,
        body=completion(prompt="word " * 100),
        param="prompt",
        code="context_length_exceeded",
    ),
    Bad(
        "token ids out of range", COMPLETIONS, body=completion(prompt=[1, 2, 10**9]), param="prompt"
    ),
    # numbers
    Bad("negative max_tokens", COMPLETIONS, body=completion(max_tokens=-1), param="max_tokens"),
    Bad(
        "max_tokens beyond 64 bits",
        COMPLETIONS,
        body=completion(max_tokens=10**30),
        param="max_tokens",
    ),
    Bad("max_tokens as a word", COMPLETIONS, body=completion(max_tokens="ten"), param="max_tokens"),
    Bad("max_tokens as a float", COMPLETIONS, body=completion(max_tokens=1.5), param="max_tokens"),
    Bad(
        "negative temperature", COMPLETIONS, body=completion(temperature=-0.1), param="temperature"
    ),
    Bad("temperature 1e308", COMPLETIONS, body=completion(temperature=1e308), param="temperature"),
    Bad("temperature NaN", COMPLETIONS, raw=b'{"model": "m", "prompt": "hi", "temperature": NaN}'),
    Bad("top_p above 1", COMPLETIONS, body=completion(top_p=1.5), param="top_p"),
    Bad("n of 0", COMPLETIONS, body=completion(n=0), param="n"),
    Bad("n of a million", COMPLETIONS, body=completion(n=1_000_000), param="n"),
    Bad(
        "frequency_penalty 3",
        COMPLETIONS,
        body=completion(frequency_penalty=3),
        param="frequency_penalty",
    ),
    Bad("seed as text", COMPLETIONS, body=completion(seed="lucky"), param="seed"),
    Bad("logprobs 50", COMPLETIONS, body=completion(logprobs=50), param="logprobs"),
    Bad("stream as yes", COMPLETIONS, body=completion(stream="yes"), param="stream"),
    # stop and logit_bias
    Bad(
        "five stop sequences",
        COMPLETIONS,
        body=completion(stop=["a", "b", "c", "d", "e"]),
        param="stop",
    ),
    Bad("a stop that is a number", COMPLETIONS, body=completion(stop=[1]), param="stop"),
    Bad(
        "logit_bias with a word key",
        COMPLETIONS,
        body=completion(logit_bias={"abc": 1}),
        param="logit_bias",
    ),
    Bad(
        "logit_bias beyond 100",
        COMPLETIONS,
        body=completion(logit_bias={"1": 500}),
        param="logit_bias",
    ),
    Bad(
        "logit_bias for a token not in the vocabulary",
        COMPLETIONS,
        body=completion(logit_bias={"999999": 1}),
        param="logit_bias",
    ),
    # chat messages
    Bad("no messages", CHAT, body={"model": MODEL}, param="messages"),
    Bad("empty messages", CHAT, body=chat(messages=[]), param="messages"),
    Bad(
        "an unknown role",
        CHAT,
        body=chat(messages=[{"role": "wizard", "content": "hi"}]),
        param="messages",
    ),
    Bad(
        "content is a number",
        CHAT,
        body=chat(messages=[{"role": "user", "content": 42}]),
        param="messages",
    ),
    Bad(
        "an image part",
        CHAT,
        body=chat(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        ),
    ),
    Bad(
        "a tool of another type",
        CHAT,
        body=chat(tools=[{"type": "web_search", "function": {"name": "f"}}]),
        param="tools[0].type",
    ),
    Bad(
        "a tool without a name",
        CHAT,
        body=chat(tools=[{"type": "function", "function": {"description": "x"}}]),
        param="tools[0].function.name",
    ),
    Bad(
        "a tool's parameters that are no object",
        CHAT,
        body=chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        param="tools[0].function.parameters",
    ),
    Bad(
        "a tool_choice naming no tool",
        CHAT,
        body=chat(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        param="tool_choice.function.name",
    ),
    Bad(
        "a tool message answering no call",
        CHAT,
        body=chat(messages=[*USER, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]),
        param="messages[1].tool_call_id",
    ),
    Bad(
        "a tool schema that would cost too much",
        CHAT,
        body=chat(
            tools=[
                tool({"type": "object", "properties": {"a": {"type": "array", "minItems": 10**8}}})
            ]
        ),
        param="tools[0].function.parameters",
    ),
    Bad(
        "a tool schema nested too deeply",
        CHAT,
        body=chat(tools=[tool(nested_all_of(200))]),
        param="tools[0].function.parameters",
    ),
    Bad(
        "a strict tool schema the grammar cannot hold",
        CHAT,
        body=chat(
            tools=[
                tool(
                    {
                        "type": "object",
                        "properties": {"a": {"type": "string", "enum": ["x"], "pattern": "^y"}},
                    },
                    strict=True,
                )
            ]
        ),
        param="tools[0].function.parameters",
    ),
    Bad(
        "a tool whose parameters are not an object schema",
        CHAT,
        body=chat(tools=[tool({"type": "string"})], tool_choice="required"),
        param="tools[0].function.parameters",
    ),
    Bad(
        "legacy functions with a schema that would cost too much",
        CHAT,
        body=chat(
            functions=[
                {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"a": {"type": "string", "minLength": 10**8}},
                    },
                }
            ]
        ),
        param="functions[0].parameters",
    ),
    # structured output
    Bad(
        "an unknown response_format",
        CHAT,
        body=chat(response_format={"type": "yaml"}),
        param="response_format",
    ),
    Bad(
        "a json_schema without a schema name",
        CHAT,
        body=chat(response_format={"type": "json_schema", "json_schema": {}}),
        param="response_format",
    ),
    Bad(
        "an invalid JSON schema",
        CHAT,
        body=chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        ),
        param="response_format",
    ),
    # other routes
    Bad("GET on a POST route", COMPLETIONS, method="GET", status=405),
    Bad("an unknown route", "/v1/embeddingz", body={}, status=404),
    Bad("detokenize past the vocabulary", "/detokenize", body={"tokens": [5000]}, param="tokens"),
    Bad("tokenize without content", "/tokenize", body={}, param="content"),
    Bad(
        "register with a bad username",
        "/register",
        body={"username": "a b", "password": "long-enough-1"},
        param="username",
    ),
    Bad(
        "register with a short password",
        "/register",
        body={"username": "carol", "password": "short"},
        param="password",
    ),
    Bad(
        "token without a password",
        "/token",
        raw=b"username=admin",
        content_type="application/x-www-form-urlencoded",
    ),
    Bad("usage for 10000 days", "/users/me/usage?days=10000", method="GET", param="days"),
    Bad(
        "a limit below zero",
        "/admin/users/admin",
        method="PATCH",
        body={"tokens_per_day": -5},
        param="tokens_per_day",
    ),
    Bad("an API key with an empty name", "/users/me/api-keys", body={"name": ""}, param="name"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = settings_for(tmp_path, APP_MAX_REQUEST_BYTES="65536")
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        yield client


def test_the_catalogue_is_big_enough() -> None:
    assert len(CATALOGUE) >= 30
    assert len({bad.name for bad in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("bad", CATALOGUE, ids=[bad.name for bad in CATALOGUE])
async def test_a_bad_request_gets_a_clear_4xx_in_openais_shape(
    client: AsyncTestClient[Any], bad: Bad
) -> None:
    content = bad.raw if bad.raw is not None else json.dumps(bad.body).encode()
    response = await client.request(
        bad.method,
        bad.path,
        content=content if bad.method != "GET" else None,
        headers={"Content-Type": bad.content_type, **bad.headers},
    )
    assert response.status_code == bad.status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str), error
    assert len(error["message"]) > 10, error
    assert "Traceback" not in error["message"]
    assert error["type"] != "server_error"
    if bad.param is not Any:  # "stop" also matches "stop[0]": the field the client must fix
        param = str(error["param"])
        assert param == bad.param or param.startswith((f"{bad.param}[", f"{bad.param}.")), error
    if bad.code is not Any:
        assert error["code"] == bad.code, error
