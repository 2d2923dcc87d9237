"""The batching engine on the real model: isolation, fairness, queueing, cancellation, draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.errors import EngineStopping, QueueFull
from app.inference.engine import EngineConfig, Finished, SamplingParams, TextDelta
from app.inference.llama_engine import LlamaEngine

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, astronauts",
    "A good breakfast includes",
    "The quick brown fox",
    "To bake bread, first",
]


async def load(model_file: Path, **kwargs: Any) -> LlamaEngine:
    params: dict[str, Any] = {"context_size": 2048, "threads": 2, "parallel": 8}
    params.update(kwargs)
    return await LlamaEngine.load(model_file, EngineConfig(**params))


@pytest.fixture
async def engine(model_file: Path) -> AsyncIterator[LlamaEngine]:
    engine = await load(model_file)
    yield engine
    await engine.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Waits for ``condition`` (a hang guard of 30 s, not a timing assertion)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def complete(
    engine: LlamaEngine,
    prompt: str,
    max_tokens: int = 24,
    *,
    ignore_eos: bool = False,
    owner: object = None,
) -> tuple[str, Finished]:
    text, finished = [], None
    tokens = await engine.tokenize(prompt)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
    async for event in engine.generate(tokens, params, owner=owner):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            finished = event
    assert finished is not None
    return "".join(text), finished


async def test_concurrent_requests_never_bleed_into_each_other(model_file: Path) -> None:
    """8 different prompts at once give, each, the text it gives alone.

    Found on this machine: llama.cpp's CPU kernels give the same logits for a sequence whatever
    else is in the batch, so greedy texts match exactly, not just their first tokens.
    """
    alone_engine = await load(model_file, parallel=1)
    try:
        alone = [await complete(alone_engine, p) for p in PROMPTS]
    finally:
        await alone_engine.close()
    together_engine = await load(model_file, parallel=8)
    try:
        together = await asyncio.gather(*(complete(together_engine, p) for p in PROMPTS))
    finally:
        await together_engine.close()
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [f.completion_tokens for _, f in together] == [f.completion_tokens for _, f in alone]


async def test_a_sequence_moved_to_close_a_gap_carries_on_unchanged(model_file: Path) -> None:
    """Running sequences are kept on consecutive ids (one llama.cpp pass per step): when the one
    between two others leaves, the last moves into the gap, its KV cache copied, mid-stream."""
    cold = await load(model_file, parallel=1)
    try:
        alone, _ = await complete(cold, PROMPTS[3], max_tokens=120, ignore_eos=True)
    finally:
        await cold.close()
    engine = await load(model_file, parallel=3)

    def running_seqs() -> set[int]:
        return {slot.seq for slot in engine._scheduler._slots if slot.request is not None}

    try:
        first = asyncio.create_task(complete(engine, PROMPTS[0], max_tokens=1000, ignore_eos=True))
        await until(lambda: running_seqs() == {0}, "the first request took slot 0")
        middle = asyncio.create_task(complete(engine, PROMPTS[1], max_tokens=1000, ignore_eos=True))
        await until(lambda: running_seqs() == {0, 1}, "the second took slot 1, next to it")
        moved = asyncio.create_task(complete(engine, PROMPTS[3], max_tokens=120, ignore_eos=True))
        await until(lambda: running_seqs() == {0, 1, 2}, "the third took slot 2")
        middle.cancel()
        await until(lambda: engine.stats().busy == 2, "the middle one left")
        await until(lambda: running_seqs() == {0, 1}, "the last one moved into the gap")
        text, finished = await moved
        first.cancel()
    finally:
        await engine.close()
    assert finished.completion_tokens == 120
    assert text == alone


async def test_a_long_prompt_does_not_freeze_running_streams(engine: LlamaEngine) -> None:
    """While a long prompt is prefilled in chunks, a running stream keeps getting tokens."""
    order: list[str] = []
    started = asyncio.Event()
    running = await engine.tokenize("Count: one, two,")
    long_prompt = await engine.tokenize("word " * 1500)

    async def stream() -> None:
        params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
        async for event in engine.generate(running, params):
            if isinstance(event, TextDelta):
                order.append("stream")
                started.set()

    async def long() -> None:
        async for event in engine.generate(
            long_prompt, SamplingParams(max_tokens=1, temperature=0)
        ):
            order.append("long")
            if isinstance(event, Finished):
                return

    streaming = asyncio.create_task(stream())
    await started.wait()
    await asyncio.gather(long(), streaming)
    first_long = order.index("long")
    before = order[:first_long].count("stream")
    # 1500 tokens take 3 steps of at most 512; the stream gets a token in each of them.
    assert before >= 3, order


async def test_a_full_queue_answers_429_then_recovers(model_file: Path) -> None:
    engine = await load(model_file, parallel=1, max_queue=1)
    try:
        busy = asyncio.create_task(
            complete(engine, "Tell a long story:", max_tokens=1000, ignore_eos=True)
        )
        await until(lambda: engine.stats().busy == 1, "the first request took the slot")
        queued = asyncio.create_task(complete(engine, "Hi", max_tokens=2))
        await until(lambda: engine.stats().waiting == 1, "the second request queued")
        with pytest.raises(QueueFull) as caught:
            await complete(engine, "Hi", max_tokens=2)
        assert caught.value.headers()["Retry-After"]
        busy.cancel()  # it held the slot long enough; the queued request goes next
        await queued
        _, finished = await complete(engine, "Hi", max_tokens=2)
        assert finished.completion_tokens == 2
    finally:
        await engine.close()


async def test_owners_take_turns_for_free_slots(model_file: Path) -> None:
    engine = await load(model_file, parallel=1, max_queue=8)
    finished: list[str] = []

    async def run(name: str, owner: str) -> None:
        await complete(engine, "Count to ten:", max_tokens=6, ignore_eos=True, owner=owner)
        finished.append(name)

    try:
        # ann's first request holds the one slot until the queue is set up (it would take
        # seconds to finish; a short one could end mid-setup on a slow machine), then leaves.
        holder = asyncio.create_task(
            complete(engine, "Tell a long story:", max_tokens=1000, ignore_eos=True, owner="ann")
        )
        await until(lambda: engine.stats().busy == 1, "ann's first request took the slot")
        tasks = []
        for name in ("a2", "a3", "a4"):  # ann's backlog queues first...
            tasks.append(asyncio.create_task(run(name, "ann")))
            await until(lambda: engine.stats().waiting == len(tasks), f"{name} queued")
        tasks.append(asyncio.create_task(run("b1", "bob")))  # ...then bob asks once
        await until(lambda: engine.stats().waiting == 4, "b1 queued")
        assert engine.stats().busy == 1, "ann's first request still holds the slot"
        holder.cancel()
        await asyncio.gather(*tasks)
    finally:
        await engine.close()
    # With one slot, finishing order is admission order: bob goes before ann's backlog.
    assert finished == ["b1", "a2", "a3", "a4"]


async def test_waiting_too_long_for_a_slot_is_a_429(model_file: Path) -> None:
    engine = await load(model_file, parallel=1, queue_timeout=0.3)
    try:
        busy = asyncio.create_task(
            complete(engine, "Tell a long story:", max_tokens=200, ignore_eos=True)
        )
        await until(lambda: engine.stats().busy == 1, "the first request took the slot")
        with pytest.raises(QueueFull, match="waited too long"):
            await complete(engine, "Hi", max_tokens=2)
        assert engine.stats().waiting == 0
        busy.cancel()
    finally:
        await engine.close()


async def test_a_request_abandoned_in_the_queue_leaves_it(model_file: Path) -> None:
    engine = await load(model_file, parallel=1)
    try:
        busy = asyncio.create_task(
            complete(engine, "Tell a long story:", max_tokens=1000, ignore_eos=True)
        )
        await until(lambda: engine.stats().busy == 1, "the first request took the slot")
        waiting = asyncio.create_task(complete(engine, "Hi", max_tokens=2))
        await until(lambda: engine.stats().waiting == 1, "the second request queued")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert engine.stats().waiting == 0
        assert engine.stats().busy == 1, "the running request is untouched"
        busy.cancel()
    finally:
        await engine.close()


async def test_a_consumer_that_leaves_frees_its_slot(engine: LlamaEngine) -> None:
    tokens = await engine.tokenize("Tell a long story:")
    stream = engine.generate(
        tokens, SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True)
    )
    async for _ in stream:
        break
    assert engine.stats().busy == 1
    await stream.aclose()  # type: ignore[attr-defined]
    await until(lambda: engine.stats().busy == 0, "the slot was freed")


async def test_a_new_request_reuses_the_slot_holding_its_prefix(
    engine: LlamaEngine, model_file: Path
) -> None:
    system = "You are a helpful assistant who answers briefly. " * 4
    await asyncio.gather(complete(engine, system + "Hi"), complete(engine, "Unrelated text"))
    warm, _ = await complete(engine, system + "Hello there")
    prompt = await engine.tokenize(system + "Hello there")
    holders = [s for s in engine._scheduler._slots if s.cached[: len(prompt)] == prompt]
    assert len(holders) == 1, "the request went to the slot that held the shared prefix"
    cached_before = [list(s.cached) for s in engine._scheduler._slots if s.cached]
    await complete(engine, "Another unrelated prompt")
    # An unrelated prompt takes an empty slot: no cache is evicted while one is free.
    cached_after = [list(s.cached) for s in engine._scheduler._slots if s.cached]
    assert len(cached_after) == len(cached_before) + 1
    assert all(any(a[: len(b)] == b for a in cached_after) for b in cached_before)
    cold_engine = await load(model_file, parallel=1)
    try:
        cold, _ = await complete(cold_engine, system + "Hello there")
    finally:
        await cold_engine.close()
    assert warm == cold


async def test_closing_lets_running_generations_finish(model_file: Path) -> None:
    engine = await load(model_file, parallel=2)
    running = asyncio.create_task(
        complete(engine, "Once upon a time", max_tokens=40, ignore_eos=True)
    )
    await until(lambda: engine.stats().busy == 1, "the generation started")
    await engine.close(grace=300)  # generous: the test is about finishing, not speed
    text, finished = await running
    assert finished.completion_tokens == 40
    assert text


async def test_no_new_work_once_stopping(engine: LlamaEngine) -> None:
    engine.stop_admitting()
    with pytest.raises(EngineStopping):
        await complete(engine, "Hi")
