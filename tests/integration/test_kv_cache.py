"""``APP_KV_CACHE_TYPE``: a quantised KV cache takes less memory per token and costs little
quality, measured on the real SmolLM2 GGUF as the service makes its context."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx
import pytest

from app.factory import create_app
from app.inference.engine import EngineConfig
from app.inference.quality import measure
from tests.integration.support import (
    MODEL_ID,
    SERVER_ADMIN_PASSWORD,
    access_token,
    served,
    server_settings,
)

# A fixed reference text (written for this test): ordinary prose the model predicts reasonably.
REFERENCE = (
    "The lighthouse stood at the end of a narrow spit of land, where the road gave out and the "
    "grass ran down to the rocks. For more than a hundred years a keeper had climbed its stairs "
    "every evening to light the lamp, and every morning to put it out again. The last keeper was "
    "a quiet man who kept a notebook of the weather, the ships that passed, and the birds that "
    "rested on the gallery during storms. When the lamp was made automatic, he was asked to "
    "leave, but he stayed in the cottage by the gate and went on writing in his notebook. People "
    "in the village said that the light never failed while he was there. Years later, when the "
    "cottage was sold, the new owners found the notebooks stacked in a cupboard, forty of them, "
    "each one filled from the first page to the last. They read about winters when the sea froze "
    "along the shore, about a whale that came into the bay one summer, and about the night a "
    "fishing boat lost its way in the fog and followed the sound of the keeper's bell to safety. "
    "The notebooks are now kept in the small museum by the harbour, where visitors can turn the "
    "pages and read the careful handwriting of a man who watched the sea for most of his life."
)


@pytest.fixture(scope="module")
def baseline(model_file: Path) -> tuple[float, float]:
    f16 = measure(model_file, EngineConfig(context_size=512, threads=2), REFERENCE)
    assert f16.tokens > 250
    return f16.mean_logprob, f16.kv_bytes_per_token


@pytest.mark.parametrize(
    ("kind", "memory", "quality"), [("q8_0", 0.55, 0.01), ("q4_0", 0.30, None)]
)
def test_a_quantised_cache_saves_memory_at_a_small_cost(
    model_file: Path,
    baseline: tuple[float, float],
    kind: Literal["q8_0", "q4_0"],
    memory: float,
    quality: float | None,
) -> None:
    f16_logprob, f16_bytes = baseline
    config = EngineConfig(context_size=512, threads=2, kv_cache_type=kind)
    measured = measure(model_file, config, REFERENCE)
    assert measured.kv_bytes_per_token <= memory * f16_bytes, (kind, measured, f16_bytes)
    if quality is not None:  # q8_0: within 1% of f16's mean log-probability of the text
        assert abs(measured.mean_logprob - f16_logprob) <= quality * abs(f16_logprob), (
            kind,
            measured.mean_logprob,
            f16_logprob,
        )


def test_the_service_generates_with_a_q8_0_cache(
    model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = server_settings(
        tmp_path_factory.mktemp("kv"), model_file, APP_CONTEXT_SIZE="512", APP_KV_CACHE_TYPE="q8_0"
    )
    with served(create_app(settings)) as url:
        token = access_token(url, "admin", SERVER_ADMIN_PASSWORD)
        answer = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL_ID, "prompt": "The sea", "max_tokens": 8, "temperature": 0},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0
