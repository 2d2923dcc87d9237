"""Prompt lookup drafting on the real model: the text is the same with and without it, greedy
or seeded, and drafts are actually made and kept on requests grounded in their input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.inference.engine import (
    ChatMessage,
    EngineConfig,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from app.inference.llama_engine import LlamaEngine

GROUNDED = Path(__file__).resolve().parents[2] / "scripts" / "lib" / "grounded.json"


def grounded(count: int) -> list[str]:
    """The first of the bench's grounded requests (rewrite or extract from a text), one per
    text."""
    spec = json.loads(GROUNDED.read_text())
    seen: dict[str, str] = {}
    for name, task in spec["requests"]:
        seen.setdefault(name, f"{task}\n\n{spec['texts'][name]}")
    return list(seen.values())[:count]


async def answers(
    model_file: Path, draft_tokens: int, prompts: list[str], **params: Any
) -> tuple[list[tuple[str, list[Any]]], int, int]:
    """Each prompt's text and log probabilities, one request after another, and the engine's
    drafted and accepted token counts."""
    config = EngineConfig(context_size=1024, threads=2, parallel=2, draft_tokens=draft_tokens)
    engine = await LlamaEngine.load(model_file, config)
    try:
        results = []
        for prompt in prompts:
            tokens = await engine.tokenize_chat([ChatMessage(role="user", content=prompt)])
            text: list[str] = []
            logprobs: list[TokenLogprob] = []
            sampling = SamplingParams(**{"max_tokens": 96, "temperature": 0, **params})
            async for event in engine.generate(tokens, sampling):
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    logprobs.extend(event.logprobs)
            results.append(("".join(text), logprobs))
        stats = engine.stats()
        return results, stats.drafted, stats.accepted
    finally:
        await engine.close()


async def test_greedy_text_is_the_same_with_and_without_drafting(model_file: Path) -> None:
    prompts = grounded(6)
    plain, drafted, _ = await answers(model_file, 0, prompts)
    assert drafted == 0  # APP_DRAFT_TOKENS=0 turns it off
    with_drafts, drafted, accepted = await answers(model_file, 8, prompts)
    assert [text for text, _ in with_drafts] == [text for text, _ in plain]
    # It drafted, and most of it was kept: these answers quote their input.
    assert accepted > 0.5 * drafted > 0


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8, "seed": 11},  # sampled: the same tokens from the same draws
        {"temperature": 0, "logprobs": 2},  # the log probabilities of drafted tokens too
        {"temperature": 0, "stop": ["six"]},  # a stop sequence inside a copied span
        {"temperature": 0.7, "seed": 3, "repeat_penalty": 1.3, "top_k": 20},
    ],
    ids=["seeded", "logprobs", "stop", "penalties"],
)
async def test_every_sampling_option_gives_the_same_text(
    model_file: Path, params: dict[str, Any]
) -> None:
    prompts = grounded(3)
    plain, _, _ = await answers(model_file, 0, prompts, **params)
    with_drafts, drafted, _ = await answers(model_file, 8, prompts, **params)
    assert drafted > 0
    for (text, logprobs), (expected, expected_logprobs) in zip(with_drafts, plain, strict=True):
        assert text == expected
        assert [p.token for p in logprobs] == [p.token for p in expected_logprobs]
        for got, want in zip(logprobs, expected_logprobs, strict=True):
            assert got.logprob == pytest.approx(want.logprob, abs=1e-3)
