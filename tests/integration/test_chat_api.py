"""Chat, streaming, JSON output, logprobs and sampling controls on the real model, via the SDK."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.support import CONTEXT_SIZE, MODEL_ID, RunningServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy_chat(client: openai.OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    params: dict[str, object] = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 16}
    params.update(temperature=0, **kwargs)
    return client.chat.completions.create(**params)  # type: ignore[no-any-return]


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = greedy_chat(client)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert (choice.message.content or "").strip()  # a 135M model's answer; not checked for truth
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5


def test_the_chat_template_in_the_gguf_is_used(
    client: openai.OpenAI, server: RunningServer
) -> None:
    """The prompt is exactly what SmolLM2's own template renders, default system turn included."""
    completion = greedy_chat(client, max_tokens=1)
    rendered = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    expected = httpx.post(
        f"{server.url}/tokenize",
        json={"content": rendered},
        headers={"Authorization": f"Bearer {server.api_key}"},
    ).json()["tokens"]
    assert expected[0] == 1, "<|im_start|> is one special token"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(expected)


async def test_async_chat_with_text_parts_matches_plain_content(
    async_client: openai.AsyncOpenAI,
) -> None:
    parts = await async_client.chat.completions.create(
        model=MODEL_ID,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the capital "},
                    {"type": "text", "text": "of France?"},
                ],
            }
        ],
        max_tokens=12,
        temperature=0,
    )
    plain = await async_client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=12, temperature=0
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_streamed_chat_equals_the_whole_answer(client: openai.OpenAI) -> None:
    whole = greedy_chat(client, max_tokens=24).choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({(c.id, c.created) for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in content]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in content) == whole
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 24


async def test_async_streamed_completion_equals_the_whole_text(
    async_client: openai.AsyncOpenAI,
) -> None:
    kwargs = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
    whole = (await async_client.completions.create(**kwargs)).choices[0].text
    stream = await async_client.completions.create(stream=True, **kwargs)
    text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert text == whole


def test_a_stop_sequence_split_across_tokens_never_streams(client: openai.OpenAI) -> None:
    whole = greedy_chat(client, max_tokens=24).choices[0].message.content or ""
    assert len(whole) > 8
    stop = whole[5:9]  # most likely spans a token boundary; equality holds either way
    stream = greedy_chat(client, max_tokens=24, stop=[stop], stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole[: whole.index(stop)]


def test_the_same_seed_gives_the_same_reply(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=MODEL_ID, messages=QUESTION, max_tokens=16, temperature=1.2, seed=seed
        )
        return completion.choices[0].message.content or ""

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1


def test_json_mode_output_parses(client: openai.OpenAI) -> None:
    completion = greedy_chat(
        client,
        messages=[
            {"role": "user", "content": 'Reply with a JSON object with one key "ok" set to true.'}
        ],
        max_tokens=120,
        response_format={"type": "json_object"},
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"},
            "pet": {"enum": ["cat", "dog"]},
        },
        "required": ["name", "age", "pet"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=80,
        temperature=0.8,
        seed=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema},
        },
    )
    data = json.loads(completion.choices[0].message.content or "")
    assert set(data) == {"name", "age", "pet"}
    assert isinstance(data["name"], str)
    assert len(data["name"]) <= 20
    assert isinstance(data["age"], int)
    assert data["pet"] in ("cat", "dog")


def test_chat_logprobs(client: openai.OpenAI) -> None:
    completion = greedy_chat(client, max_tokens=8, logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None
    tokens = choice.logprobs.content or []
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        ranked = [alt.logprob for alt in token.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding picks the likeliest token.
        assert math.isclose(token.logprob, ranked[0])
        assert bytes(token.bytes or []).decode("utf-8", "replace") == token.token


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert "".join(logprobs.tokens or []) == completion.choices[0].text
    assert len(logprobs.token_logprobs or []) == 6
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])


def test_n_gives_several_choices_streamed_or_not(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=8, temperature=1.0, n=3, seed=5
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=8, temperature=1.0, n=2, stream=True
    )
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_logit_bias_bans_a_token(client: openai.OpenAI, server: RunningServer) -> None:
    plain = (
        client.completions.create(
            model=MODEL_ID, prompt="The capital of France is", max_tokens=3, temperature=0
        )
        .choices[0]
        .text
    )
    first = httpx.post(
        f"{server.url}/tokenize",
        json={"content": plain, "add_special": False},
        headers={"Authorization": f"Bearer {server.api_key}"},
    ).json()["tokens"][0]
    banned = (
        client.completions.create(
            model=MODEL_ID,
            prompt="The capital of France is",
            max_tokens=3,
            temperature=0,
            logit_bias={str(first): -100},
        )
        .choices[0]
        .text
    )
    assert banned != plain


def test_penalties_and_llama_cpp_sampling_fields_are_accepted(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID,
        prompt="a a a a a a",
        max_tokens=8,
        temperature=0.7,
        presence_penalty=1.5,
        frequency_penalty=1.0,
        extra_body={"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.3},
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_sdk_refusals(client: openai.OpenAI) -> None:
    refusals = [
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
            ]
        },
        {"top_logprobs": 2},
        {"messages": []},
        {"messages": [{"role": "user", "content": "hello " * 2000}]},
        {"max_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"$ref": "#/x"}},
            }
        },
    ]
    for extra in refusals:
        params = {"model": MODEL_ID, "messages": QUESTION, **extra}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**params)
        assert caught.value.status_code == 400
        assert caught.value.param, extra
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "hello " * 2000}], stream=True
        )
    assert too_long.value.code == "context_length_exceeded"
    assert str(CONTEXT_SIZE) in too_long.value.message
    with pytest.raises(openai.BadRequestError) as echo:
        client.completions.create(model=MODEL_ID, prompt="x", echo=True)
    assert echo.value.param == "echo"


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_raw_sse_framing(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL_ID, "messages": QUESTION, "max_tokens": 4, "stream": True},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        body = response.read().decode()
    blocks = body.split("\n\n")
    assert blocks[-1] == ""
    assert blocks[-2] == "data: [DONE]"
    for block in blocks[:-2]:
        assert block.startswith("data: {")
        json.loads(block.removeprefix("data: "))


def test_a_client_that_leaves_a_stream_frees_its_slot(
    client: openai.OpenAI, server: RunningServer
) -> None:
    auth = {"Authorization": f"Bearer {server.api_key}"}

    def busy() -> int:
        return int(httpx.get(f"{server.url}/health").json()["slots_busy"])

    def generated_today() -> int:
        return int(httpx.get(f"{server.url}/users/me/usage", headers=auth).json()["tokens_today"])

    before = generated_today()
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json={
            "model": MODEL_ID,
            "prompt": "Story:",
            "max_tokens": 400,
            "stream": True,
            "ignore_eos": True,
        },
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert busy() == 1
    # The scheduler drops the abandoned sequence at its next step, long before 400 tokens;
    # the stream is charged what was generated, which shows where it stopped.
    for _ in range(3000):  # a hang guard of 30 s, not a timing assertion
        if busy() == 0 and generated_today() > before:
            break
        time.sleep(0.01)
    assert busy() == 0
    assert 0 < generated_today() - before < 400
    completion = client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=2)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


def test_the_readme_openai_script_runs_unmodified(server: RunningServer) -> None:
    """scripts/openai_example.py is plain OpenAI code; only the SDK's variables point it here."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "openai_example.py"
    env = {**os.environ, "OPENAI_BASE_URL": f"{server.url}/v1", "OPENAI_API_KEY": server.api_key}
    env["OPENAI_MODEL"] = MODEL_ID  # the script's one setting beside the SDK's
    result = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for expected in (
        "chat[1]",
        "stream usage:",
        "json_object:",
        "json_schema:",
        "logprob",
        "completion[1]",
    ):
        assert expected in result.stdout
