"""The llama.cpp engine on the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import InvalidRequest, ModelUnavailable
from app.inference.chat_templates import FALLBACK_CHAT_TEMPLATES, ChatTemplate
from app.inference.engine import ChatMessage, EngineConfig, Finished, SamplingParams, TextDelta
from app.inference.llama_engine import LlamaEngine
from app.inference.tool_formats import GENERIC, ToolSpec


@pytest.fixture
async def engine(model_file: Path) -> AsyncIterator[LlamaEngine]:
    engine = await LlamaEngine.load(model_file, EngineConfig(context_size=256, threads=2))
    yield engine
    await engine.close()


async def run(engine: LlamaEngine, prompt: str, **params: object) -> tuple[list[str], Finished]:
    deltas: list[str] = []
    finished = None
    tokens = await engine.tokenize(prompt)
    async for event in engine.generate(tokens, SamplingParams(**params)):  # type: ignore[arg-type]
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            finished = event
    assert finished is not None
    return deltas, finished


async def test_a_real_decode_runs(engine: LlamaEngine) -> None:
    """Guards the build: llama.cpp's AMX kernels crashed (SIGSEGV) on the first decode here."""
    deltas, finished = await run(engine, "The capital of France is", max_tokens=8, temperature=0.0)
    assert finished.completion_tokens == 8
    assert finished.reason == "length"
    assert finished.prompt_tokens == len(await engine.tokenize("The capital of France is"))
    assert "".join(deltas).strip()


async def test_greedy_decoding_is_repeatable(engine: LlamaEngine) -> None:
    first, _ = await run(engine, "Once upon a time", max_tokens=24, temperature=0.0)
    second, _ = await run(engine, "Once upon a time", max_tokens=24, temperature=0.0)
    assert "".join(first) == "".join(second)


async def test_the_same_seed_gives_the_same_text(engine: LlamaEngine) -> None:
    texts: dict[int, list[str]] = {}
    for seed in (1, 1, 2, 3):
        deltas, _ = await run(
            engine, "Write a word:", max_tokens=24, temperature=1.0, seed=seed, top_k=0, min_p=0.0
        )
        texts.setdefault(seed, []).append("".join(deltas))
    assert texts[1][0] == texts[1][1]
    assert len({texts[1][0], texts[2][0], texts[3][0]}) > 1, "seeds should change the sample"


async def test_max_tokens_is_clamped_to_the_context(engine: LlamaEngine) -> None:
    prompt = "count: " + " ".join(str(i) for i in range(60))
    prompt_tokens = len(await engine.tokenize(prompt))
    assert prompt_tokens < engine.context_size
    # ignore_eos: the text cannot end before the context does.
    _, finished = await run(engine, prompt, max_tokens=10_000, temperature=0.0, ignore_eos=True)
    assert finished.completion_tokens == engine.context_size - prompt_tokens
    assert finished.reason == "length"


def test_the_fallback_chat_format_is_zephyr() -> None:
    """What a GGUF without a chat template gets (TinyLlama-Chat's own format)."""
    template = ChatTemplate.jinja(
        FALLBACK_CHAT_TEMPLATES["zephyr"], eos_token="</s>", bos_token="<s>"
    )
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    assert template.render(messages) == (
        "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    )


async def test_a_stop_split_across_tokens_never_leaks(engine: LlamaEngine) -> None:
    deltas, _ = await run(engine, "Once upon a time", max_tokens=32, temperature=0.0)
    # Build a stop sequence from the end of one token's text and the start of the next.
    k = next(
        i for i in range(1, len(deltas) - 1) if len(deltas[i]) >= 2 and len(deltas[i + 1]) >= 2
    )
    stop = deltas[k][-2:] + deltas[k + 1][:2]
    full = "".join(deltas)
    expected = full[: full.index(stop)]

    cut, finished = await run(
        engine, "Once upon a time", max_tokens=32, temperature=0.0, stop=(stop,)
    )
    # Equality proves that not even the first half of the stop was ever streamed.
    assert "".join(cut) == expected
    assert finished.reason == "stop"


async def test_closing_a_generation_early_frees_the_engine(engine: LlamaEngine) -> None:
    tokens = await engine.tokenize("Tell me a long story")
    stream = engine.generate(tokens, SamplingParams(max_tokens=200, temperature=0.0))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    await stream.aclose()  # type: ignore[attr-defined]
    _, finished = await run(engine, "Hello", max_tokens=4, temperature=0.0)
    assert finished.completion_tokens == 4


async def test_reusing_a_cached_prefix_gives_the_same_text_as_a_cold_start(
    engine: LlamaEngine, model_file: Path
) -> None:
    base = "The history of the Roman Empire"
    await run(engine, base, max_tokens=12, temperature=0.0)  # fills the cache with `base`
    warm, _ = await run(engine, base + " begins with", max_tokens=12, temperature=0.0)
    repeat, _ = await run(engine, base + " begins with", max_tokens=12, temperature=0.0)
    cold_engine = await LlamaEngine.load(model_file, EngineConfig(context_size=256, threads=2))
    try:
        cold, _ = await run(cold_engine, base + " begins with", max_tokens=12, temperature=0.0)
    finally:
        await cold_engine.close()
    assert "".join(warm) == "".join(cold) == "".join(repeat)


async def test_a_grammar_llama_cpp_rejects_is_an_invalid_request(engine: LlamaEngine) -> None:
    with pytest.raises(InvalidRequest, match="could not be compiled"):
        await run(engine, "Hi", max_tokens=2, temperature=0.0, grammar="root ::= (")
    _, finished = await run(engine, "Hi", max_tokens=2, temperature=0.0)
    assert finished.completion_tokens == 2, "the engine keeps working"


async def test_a_file_that_is_not_gguf_is_refused_by_name(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is not a model")
    with pytest.raises(ModelUnavailable, match=r"notes\.gguf is not a GGUF file"):
        await LlamaEngine.load(bogus, EngineConfig(context_size=256))


async def test_a_truncated_gguf_is_refused_by_name(tmp_path: Path, model_file: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with model_file.open("rb") as f:
        truncated.write_bytes(f.read(4_000_000))
    with pytest.raises(ModelUnavailable, match=r"truncated\.gguf; it may be truncated"):
        await LlamaEngine.load(truncated, EngineConfig(context_size=256))


async def test_a_lazy_grammar_starts_cleanly_when_a_token_runs_past_the_opening(
    engine: LlamaEngine,
) -> None:
    """Unconstrained, this prompt's answer writes the opening's '[' in the token ' [{', which
    runs past it; that token is refused and resampled, and the grammar holds the rest."""
    line = 'Reply: {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}\n'
    prompt = line * 3 + "Reply:"
    overshoot = await engine.tokenize(" [{", add_special=False)
    free, _ = await run(engine, prompt, max_tokens=8, temperature=0.0)
    assert overshoot[0] in await engine.tokenize("".join(free), add_special=False)
    tools = [
        ToolSpec(
            name="get_weather",
            description="",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            strict=False,
        )
    ]
    grammar, _ = GENERIC.grammar(tools, params=["tools"], after_opening=True)
    deltas, finished = await run(
        engine,
        prompt,
        max_tokens=40,
        temperature=0.0,
        grammar=grammar,
        grammar_opening=GENERIC.opening_regex,
    )
    assert finished.reason == "stop"
    (call,) = json.loads("".join(deltas))["tool_calls"]
    assert call["name"] == "get_weather"
    assert isinstance(call["arguments"]["city"], str)


async def test_short_inputs_are_tokenized_without_a_thread_hop(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread hop costs more than tokenizing a short prompt on a machine whose cores decode;
    long inputs, and what one turn of the event loop has no room left for, still go to the
    preparation threads."""
    hops = []
    submit = engine._prep.submit

    def counted(*args: object, **kwargs: object) -> object:
        hops.append(args[0])
        return submit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine._prep, "submit", counted)
    short = await engine.tokenize("The capital of France is")
    chat = await engine.tokenize_chat([ChatMessage(role="user", content="Hello there")])
    assert short
    assert chat
    assert not hops
    long_text = "The capital of France is Paris. " * 100
    long = await engine.tokenize(long_text)
    await engine.tokenize_chat([ChatMessage(role="user", content=long_text)])
    # An assistant turn to continue counts too (Anthropic's prefill).
    hello = [ChatMessage(role="user", content="Hello")]
    await engine.tokenize_chat(hello, prefill=long_text)
    assert len(hops) == 3
    assert long[: len(short)] == short
    # Sixty-four prompts of 600 characters in one request: one fits the turn, the rest hop.
    await asyncio.gather(*(engine.tokenize(long_text[:600]) for _ in range(64)))
    assert len(hops) == 3 + 63
