"""The engine interface: what the services above need from a text generator.

The serial llama.cpp engine implements it today; a batching scheduler can replace it without the
services or controllers changing. Nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol

import msgspec

FinishReason = Literal["stop", "length"]


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick tokens and when to stop, for one sequence."""

    max_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class TextDelta(msgspec.Struct, frozen=True):
    """Newly generated text, safe to show (never part of a stop sequence)."""

    text: str


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a generation."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = TextDelta | Finished


class Engine(Protocol):
    """Generates text for one loaded model."""

    @property
    def context_size(self) -> int:
        """Tokens the context holds: prompt plus completion."""
        ...

    async def tokenize(self, text: str) -> list[int]:
        """The tokens the model sees for ``text``: special tokens parsed, BOS if the model wants."""
        ...

    def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        """Streams ``TextDelta``s, then one ``Finished``.

        ``max_tokens`` is clamped to what the context has room for (``Finished.reason`` is then
        ``"length"``). Closing the iterator early cancels the generation.
        """
        ...

    async def close(self) -> None:
        """Frees the model; no generation may be running."""
        ...
