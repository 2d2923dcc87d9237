"""``/v1/embeddings`` on a real embedding GGUF (all-MiniLM-L6-v2) served beside the SmolLM2 chat
model, through the ``openai`` SDK, LangChain's ``OpenAIEmbeddings`` and LlamaIndex's
``OpenAILikeEmbedding``: meaning, batching, encodings, dimensions, errors, usage and limits."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from app.factory import create_app
from app.settings import Settings
from tests.integration.support import (
    SERVER_ADMIN_PASSWORD,
    RunningServer,
    access_token,
    new_api_key,
    served,
)

EMBEDDER = "minilm"
CHAT = "smol"
GUITAR = "A man is playing a guitar on stage."
PARAPHRASE = "Someone performs music with a guitar."
UNRELATED = "The stock market fell sharply on Tuesday."


@pytest.fixture(scope="module")
def both(
    model_file: Path, embedding_model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One service with a chat model and an embedding model, both loaded."""
    folder = tmp_path_factory.mktemp("embeddings")
    models = folder / "models.toml"
    models.write_text(
        f'[[models]]\nid = "{CHAT}"\npath = "{model_file}"\n\n'
        f'[[models]]\nid = "{EMBEDDER}"\npath = "{embedding_model_file}"\n'
    )
    settings = Settings.from_mapping(
        {
            "APP_DATA_DIR": str(folder / "data"),
            "APP_ADMIN_PASSWORD": SERVER_ADMIN_PASSWORD,
            "APP_PASSWORD_HASH_MEMORY_KIB": "1024",
            "APP_PASSWORD_HASH_TIME_COST": "1",
            "APP_MODELS_FILE": str(models),
            "APP_MAX_LOADED_MODELS": "2",
            "APP_CONTEXT_SIZE": "512",
            "APP_REQUESTS_PER_MINUTE": "0",
            "APP_TOKENS_PER_DAY": "0",
            "APP_CONCURRENT_PER_USER": "0",
        }
    )
    with served(create_app(settings)) as url:
        key = new_api_key(url, access_token(url, "admin", SERVER_ADMIN_PASSWORD), "tests")
        yield RunningServer(url=url, settings=settings, api_key=key)


@pytest.fixture
def sdk(both: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{both.url}/v1", api_key=both.api_key, max_retries=0)


def vectors(response: openai.types.CreateEmbeddingResponse) -> list[np.ndarray]:
    return [np.array(item.embedding, dtype=np.float32) for item in response.data]


def test_models_say_which_kind_they_are(sdk: openai.OpenAI) -> None:
    kinds = {model.id: model.kind for model in sdk.models.list().data}  # type: ignore[attr-defined]
    assert kinds == {CHAT: "chat", EMBEDDER: "embedding"}


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(sdk: openai.OpenAI) -> None:
    guitar, paraphrase, unrelated = vectors(
        sdk.embeddings.create(model=EMBEDDER, input=[GUITAR, PARAPHRASE, UNRELATED])
    )
    assert float(guitar @ paraphrase) > 0.5
    assert float(guitar @ unrelated) < 0.2
    for vector in (guitar, paraphrase, unrelated):
        assert vector.shape == (384,)
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-3


def test_base64_and_float_carry_the_same_vectors(sdk: openai.OpenAI, both: RunningServer) -> None:
    by_sdk = vectors(sdk.embeddings.create(model=EMBEDDER, input=[GUITAR, UNRELATED]))  # base64
    floats = sdk.embeddings.create(
        model=EMBEDDER, input=[GUITAR, UNRELATED], encoding_format="float"
    )
    raw = httpx.post(
        f"{both.url}/v1/embeddings",
        json={"model": EMBEDDER, "input": GUITAR, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {both.api_key}"},
        timeout=60,
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    for a, b in zip(by_sdk, vectors(floats), strict=True):
        assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(decoded, by_sdk[0], atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert [item.index for item in floats.data] == [0, 1]


def test_a_batch_gives_what_one_at_a_time_gives(sdk: openai.OpenAI) -> None:
    texts = [f"Passage {i} about {topic}." for i, topic in enumerate(["cats", "tax", "rain"] * 20)]
    together = vectors(sdk.embeddings.create(model=EMBEDDER, input=texts))
    for text, vector in list(zip(texts, together, strict=True))[::7]:
        (alone,) = vectors(sdk.embeddings.create(model=EMBEDDER, input=text))
        assert float(alone @ vector) > 0.999


def test_token_ids_and_dimensions(sdk: openai.OpenAI) -> None:
    (by_text,) = vectors(sdk.embeddings.create(model=EMBEDDER, input=GUITAR))
    ids = [101, 1037, 2158, 2003, 2652, 1037, 2858, 2006, 2754, 1012, 102]  # GUITAR, in BERT ids
    (by_ids,) = vectors(sdk.embeddings.create(model=EMBEDDER, input=[ids]))
    assert float(by_text @ by_ids) > 0.999
    (short,) = vectors(sdk.embeddings.create(model=EMBEDDER, input=GUITAR, dimensions=128))
    assert short.shape == (128,)
    assert abs(float(np.linalg.norm(short)) - 1) < 1e-3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["ok", " ".join(["word"] * 600)]}, "input[1]"),
        ({"input": [[]]}, "input[0]"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [[1, 2, 10**9]]}, "input[0]"),
        ({"input": "hi", "dimensions": 1000}, "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi", "model": CHAT}, "model"),
    ],
)
def test_bad_inputs_are_clear_400s(
    both: RunningServer, body: dict[str, object], param: str
) -> None:
    response = httpx.post(
        f"{both.url}/v1/embeddings",
        json={"model": EMBEDDER, **body},
        headers={"Authorization": f"Bearer {both.api_key}"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_chat_request_to_the_embedding_model_is_a_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert "embedding model" in str(refused.value)
    reply = sdk.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_embedding_tokens_are_the_callers_usage(both: RunningServer, sdk: openai.OpenAI) -> None:
    token = access_token(both.url, "admin", SERVER_ADMIN_PASSWORD)
    headers = {"Authorization": f"Bearer {token}"}
    before = httpx.get(f"{both.url}/users/me/usage", headers=headers).json()
    used = sdk.embeddings.create(model=EMBEDDER, input=[GUITAR, UNRELATED]).usage.prompt_tokens
    after = httpx.get(f"{both.url}/users/me/usage", headers=headers).json()
    assert after["tokens_today"] == before["tokens_today"] + used
    assert after["days"][0]["embedding_tokens"] >= used


def test_langchain_openai_embeddings(both: RunningServer) -> None:
    from langchain_openai import OpenAIEmbeddings

    settings = dict(model=EMBEDDER, base_url=f"{both.url}/v1", api_key=both.api_key)
    # What its docs require for servers other than OpenAI: send the texts, not tiktoken ids.
    embeddings = OpenAIEmbeddings(**settings, check_embedding_ctx_length=False)  # type: ignore[arg-type]
    documents = embeddings.embed_documents([GUITAR, UNRELATED])
    query = np.array(embeddings.embed_query(PARAPHRASE))
    assert float(query @ np.array(documents[0])) > float(query @ np.array(documents[1]))


def test_llamaindex_openai_like_embedding(both: RunningServer) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embedder = OpenAILikeEmbedding(
        model_name=EMBEDDER, api_base=f"{both.url}/v1", api_key=both.api_key, max_retries=0
    )
    guitar = np.array(embedder.get_text_embedding(GUITAR))
    paraphrase = np.array(embedder.get_query_embedding(PARAPHRASE))
    unrelated = np.array(embedder.get_text_embedding(UNRELATED))
    assert float(guitar @ paraphrase) > float(guitar @ unrelated)
