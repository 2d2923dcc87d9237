"""/v1/completions and /v1/models on the real model, over HTTP and through the `openai` SDK."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.integration.support import (
    CONTEXT_SIZE,
    MODEL_ID,
    SERVER_ADMIN_PASSWORD,
    RunningServer,
    access_token,
)


def test_the_seed_flow_token_then_completion_returns_honest_usage(server: RunningServer) -> None:
    token = access_token(server.url, "admin", SERVER_ADMIN_PASSWORD)
    response = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 12},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert list(choice) == ["text", "index", "logprobs", "finish_reason"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 12
    # "length" exactly when max_tokens cut the text.
    assert (choice["finish_reason"] == "length") == (usage["completion_tokens"] == 12)


def test_sdk_with_an_access_token_from_the_token_endpoint(server: RunningServer) -> None:
    token = access_token(server.url, "admin", SERVER_ADMIN_PASSWORD)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
    completion = client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=2)
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_sdk_without_valid_credentials_is_refused(server: RunningServer) -> None:
    for key in ("sk-not-a-real-key", "unused"):
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=2)
        assert caught.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_sdk_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=10, temperature=0
    )
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert completion.model == MODEL_ID
    choice = completion.choices[0]
    assert choice.text.strip()
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 10


def test_sdk_prompt_tokens_match_the_tokenizer(client: openai.OpenAI) -> None:
    short = client.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=1)
    longer = client.completions.create(model=MODEL_ID, prompt="Hi there, how are you", max_tokens=1)
    assert short.usage is not None
    assert longer.usage is not None
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens


def test_sdk_stop_sequence_ends_the_text_and_is_not_returned(client: openai.OpenAI) -> None:
    full = client.completions.create(
        model=MODEL_ID, prompt="List: 1. apples\n2.", max_tokens=24, temperature=0
    )
    text = full.choices[0].text
    assert "\n" in text, "the test needs a completion that continues past a line"
    cut = client.completions.create(
        model=MODEL_ID, prompt="List: 1. apples\n2.", max_tokens=24, temperature=0, stop=["\n"]
    )
    assert cut.choices[0].text == text[: text.index("\n")]
    assert cut.choices[0].finish_reason == "stop"


def test_sdk_list_of_prompts(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID, prompt=["Roses are", "The sky is"], max_tokens=4, temperature=0
    )
    assert [c.index for c in completion.choices] == [0, 1]
    singles = [
        client.completions.create(model=MODEL_ID, prompt=p, max_tokens=4, temperature=0)
        for p in ["Roses are", "The sky is"]
    ]
    assert [c.text for c in completion.choices] == [s.choices[0].text for s in singles]


def test_sdk_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample() -> str:
        return (
            client.completions.create(
                model=MODEL_ID, prompt="A random word:", max_tokens=12, temperature=1.0, seed=7
            )
            .choices[0]
            .text
        )

    assert sample() == sample()


def test_sdk_lists_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


def test_sdk_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=1)
    assert caught.value.code == "model_not_found"


def test_sdk_prompt_beyond_the_context_is_refused_before_generating(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_ID, prompt="hello " * 2000, max_tokens=1)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "prompt"
    message = caught.value.message
    assert str(CONTEXT_SIZE) in message
    assert "2000" in message or "2001" in message


def test_sdk_out_of_range_value_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_ID, prompt="hi", temperature=3)
    assert caught.value.param == "temperature"


def test_max_tokens_beyond_the_context_is_clamped(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL_ID,
        prompt="Count: 1 2 3",
        max_tokens=100_000,
        temperature=0,
        extra_body={"ignore_eos": True},  # the text cannot end before the context does
    )
    assert completion.usage is not None
    assert completion.usage.total_tokens == CONTEXT_SIZE
    assert completion.choices[0].finish_reason == "length"


async def test_async_sdk_concurrent_requests_match_their_solo_results(
    async_client: openai.AsyncOpenAI,
) -> None:
    prompts = ["The sun is", "Cats like to", "Python is a", "In 1492,"]

    async def complete(prompt: str) -> str:
        completion = await async_client.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0
        )
        return completion.choices[0].text

    together = await asyncio.gather(*(complete(p) for p in prompts))
    alone = [await complete(p) for p in prompts]
    assert together == alone


async def test_health_answers_while_a_generation_runs(
    async_client: openai.AsyncOpenAI, server: RunningServer
) -> None:
    """Generation runs off the event loop: other requests are served meanwhile."""
    generation = asyncio.create_task(
        async_client.completions.create(
            model=MODEL_ID,
            prompt="Story:",
            max_tokens=300,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    )
    async with httpx.AsyncClient(base_url=server.url) as http:  # /health is public
        await asyncio.sleep(0.3)
        health = await http.get("/health", timeout=30)
        still_generating = not generation.done()
    assert health.status_code == 200
    completion = await generation
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 300
    assert still_generating, "/health waited for the generation: the event loop was blocked"


def test_a_prompt_of_token_ids_completes_like_its_text(
    server: RunningServer, client: openai.OpenAI
) -> None:
    text = "The capital of France is"
    tokens = httpx.post(
        f"{server.url}/tokenize",
        json={"content": text},
        headers={"Authorization": f"Bearer {server.api_key}"},
    ).json()["tokens"]
    by_text = client.completions.create(model=MODEL_ID, prompt=text, max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=MODEL_ID, prompt=tokens, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage is not None
    assert by_ids.usage.prompt_tokens == len(tokens)
