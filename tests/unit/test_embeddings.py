"""``/v1/embeddings`` above the engine: inputs read and checked, vectors encoded, dimensions,
usage and the daily limit, over a scripted embedder."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from app.factory import create_app
from tests.unit.fakes import FakeEmbedder
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

MODEL = "tinyllama-1.1b"  # the only configured model, served here by the fake embedder


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


async def client_for(
    tmp_path: Path, embedder: FakeEmbedder, **env: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings_for(tmp_path, **env), engine=embedder)
    async with AsyncTestClient(app=app) as client:
        client.headers.update(bearer(await login(client, ADMIN, ADMIN_PASSWORD)))
        yield client


@pytest.fixture
async def client(tmp_path: Path, embedder: FakeEmbedder) -> AsyncIterator[AsyncTestClient[Any]]:
    async for client in client_for(tmp_path, embedder):
        yield client


async def embed(client: AsyncTestClient[Any], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_every_input_gets_its_vector_in_order_in_one_call(
    client: AsyncTestClient[Any], embedder: FakeEmbedder
) -> None:
    answer = await embed(client, input=["one", "two words", "three more words"])
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    assert answer["object"] == "list"
    assert answer["model"] == MODEL
    assert answer["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert len(embedder.batches) == 1  # the engine got them together, to batch
    # The fake's vector is (tokens, their sum, 1, 2), normalised: its first over its third
    # is the input's token count, which says which input each vector is of.
    counts = [round(item["embedding"][0] / item["embedding"][2]) for item in answer["data"]]
    assert counts == [1, 2, 3]


async def test_base64_is_little_endian_float32(client: AsyncTestClient[Any]) -> None:
    floats = await embed(client, input="hello there")
    encoded = await embed(client, input="hello there", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"])


async def test_dimensions_cut_and_normalise_again(client: AsyncTestClient[Any]) -> None:
    answer = await embed(client, input="hello there", dimensions=2)
    vector = np.array(answer["data"][0]["embedding"])
    assert vector.shape == (2,)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-6


async def test_token_ids_are_embedded_as_given(
    client: AsyncTestClient[Any], embedder: FakeEmbedder
) -> None:
    await embed(client, input=[[5, 6, 7], [8]])
    assert embedder.batches[-1] == [[5, 6, 7], [8]]
    await embed(client, input=[5, 6])
    assert embedder.batches[-1] == [[5, 6]]


async def test_embedded_tokens_count_against_the_daily_limit(
    tmp_path: Path, embedder: FakeEmbedder
) -> None:
    async for client in client_for(tmp_path, embedder, APP_TOKENS_PER_DAY="8"):
        await embed(client, input=["a b c d e f"])
        usage = (await client.get("/users/me/usage")).json()
        assert usage["tokens_today"] == 6
        assert usage["days"][0]["embedding_tokens"] == 6
        # 3 more would pass the limit: refused before they are embedded.
        over = await client.post("/v1/embeddings", json={"model": MODEL, "input": "a b c"})
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "tokens"
        await embed(client, input="a b")  # exactly up to it
        refused = await client.post("/v1/embeddings", json={"model": MODEL, "input": "a"})
        assert refused.status_code == 429


async def test_a_chat_request_to_an_embedding_model_is_a_400(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert (await client.get("/v1/models")).json()["data"][0]["kind"] == "embedding"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": [[1, -2]]}, "input[0]"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": ["x " * 20]}, "input[0]"),
        ({"input": "x", "dimensions": 5}, "dimensions"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": ["x"] * 2049}, "input"),
    ],
)
async def test_bad_inputs_are_clear_400s(
    client: AsyncTestClient[Any], body: dict[str, Any], param: str
) -> None:
    response = await client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
