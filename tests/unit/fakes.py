"""A scripted engine for tests of the code above the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import numpy as np

from app.errors import InvalidRequest
from app.inference.engine import (
    ChatMessage,
    EngineStats,
    Finished,
    GenerationEvent,
    SamplingParams,
    TextDelta,
)
from app.inference.text import StopMatcher
from app.inference.tool_formats import GENERIC, ToolFormat, ToolSpec


class FakeEngine:
    """Tokenizes on whitespace and 'generates' a fixed list of words, honouring max_tokens/stop."""

    kind: Literal["chat"] = "chat"

    def __init__(
        self,
        words: Sequence[str] = ("one", "two", "three", "four"),
        context_size: int = 64,
        fail_after: int | None = None,
        refuse: Exception | None = None,
    ):
        self.words = list(words)
        self.fail_after = fail_after
        self.refuse = refuse  # raised before any event, as a full queue is
        self._context_size = context_size
        self.calls: list[tuple[list[int], SamplingParams]] = []
        self.owners: list[object] = []
        self.chats: list[list[ChatMessage]] = []
        self.tools: list[list[ToolSpec]] = []
        self.prefills: list[str | None] = []
        self.closed = False

    @property
    def context_size(self) -> int:
        return self._context_size

    @property
    def vocab_size(self) -> int:
        return 1000

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [len(word) for word in text.split()]

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return " ".join("x" * t for t in tokens)

    @property
    def tool_format(self) -> ToolFormat:
        return GENERIC

    async def tokenize_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        tool_required: bool = False,
        prefill: str | None = None,
    ) -> list[int]:
        self.chats.append(list(messages))
        self.tools.append(list(tools))
        self.prefills.append(prefill)
        text = " ".join(f"{m.role}: {m.content}" for m in messages)
        return await self.tokenize(f"{text} {prefill or ''}")

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, owner: object = None
    ) -> AsyncIterator[GenerationEvent]:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((list(prompt_tokens), params))
        self.owners.append(owner)
        budget = min(params.max_tokens, self._context_size - len(prompt_tokens))
        stops = StopMatcher(params.stop)
        count, hit = 0, False
        for word in self.words:  # running out of words stands for the model's end-of-text
            if hit or count >= budget:
                break
            await asyncio.sleep(0)
            if self.fail_after is not None and count == self.fail_after:
                raise RuntimeError("the engine broke")
            count += 1
            text, hit = stops.feed(" " + word)
            if text:
                yield TextDelta(text, generated=count)
        if not hit and (tail := stops.flush()):
            yield TextDelta(tail, generated=count)
        yield Finished(
            reason="stop" if hit or count < budget else "length",
            prompt_tokens=len(prompt_tokens),
            completion_tokens=count,
        )

    def stats(self) -> EngineStats:
        return EngineStats(slots=1, busy=0, waiting=0)

    def stop_admitting(self) -> None:
        pass

    async def close(self, grace: float = 0.0) -> None:
        self.closed = True


class FakeEmbedder:
    """Embeds a whitespace-tokenized text as a fixed function of its words (4 dimensions)."""

    kind: Literal["embedding"] = "embedding"
    dimensions = 4
    context_size = 16
    vocab_size = 1000

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [len(word) for word in text.split()]

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[Any]:
        for index, tokens in enumerate(inputs):
            if len(tokens) > self.context_size:
                raise InvalidRequest("too long", param=f"input[{index}]")
        self.batches.append([list(t) for t in inputs])
        vectors = []
        for tokens in inputs:
            vector = np.array([len(tokens), sum(tokens), 1.0, 2.0], dtype=np.float32)
            vectors.append(vector / np.linalg.norm(vector))
        return vectors

    def stats(self) -> EngineStats:
        return EngineStats(slots=1, busy=0, waiting=0)

    def stop_admitting(self) -> None:
        pass

    async def close(self, grace: float = 0.0) -> None:
        pass
