"""The engine interface: what the services above need from a text generator.

``LlamaEngine`` implements it with continuous batching on llama.cpp; tests of the code above it
use a scripted fake. Nothing here knows about HTTP or the service's settings: an engine gets an
``EngineConfig`` built at the wiring point.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import msgspec

from app.inference.tool_formats import ToolFormat, ToolSpec

FinishReason = Literal["stop", "length"]


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one model's engine."""

    context_size: int
    """Tokens each sequence's context holds: prompt plus completion."""
    parallel: int = 1
    """Sequences generated at once (slots)."""
    threads: int | None = None
    """CPU threads for llama.cpp; None: all cores."""
    max_queue: int = 16
    """Requests that may wait for a slot."""
    queue_timeout: float = 60.0
    """Seconds a request may wait for a slot."""
    chat_format_fallback: str = "zephyr"
    """The chat format for a GGUF without a template of its own (nor a built-in one)."""
    chat_template: str | None = None
    """A Jinja chat template to use instead of the GGUF's."""
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    """The KV cache's element type: q8_0 takes about half of f16's memory, q4_0 about 28%
    (quantised types need flash attention, which is then turned on)."""
    draft_tokens: int = 8
    """The longest draft a sequence proposes from its own prompt and output (prompt lookup);
    0 turns drafting off."""


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick tokens and when to stop, for one sequence."""

    max_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None
    """A GBNF grammar (root rule ``root``) that every generated text must match."""
    grammar_opening: str | None = None
    """With this regular expression (ASCII), the grammar is lazy: the text is free up to the
    first match, which ends on a token boundary, and the grammar holds what follows it."""
    logprobs: int | None = None
    """None: no log probabilities; n: each token's, plus the n most likely alternatives."""
    ignore_eos: bool = False
    """Generate until max_tokens or a stop sequence, never ending at end-of-text."""


class TopLogprob(msgspec.Struct, frozen=True):
    """One candidate token and its log probability."""

    token: str
    bytes: tuple[int, ...]
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """A generated token, its log probability, and the most likely alternatives."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class TextDelta(msgspec.Struct, frozen=True):
    """Newly generated text, safe to show (never part of a stop sequence)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens released with this text, when log probabilities were asked for."""
    generated: int = 0
    """Tokens generated so far in this sequence (what a client that leaves now has cost)."""


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a generation."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
    """The stop sequence that ended the text, if one did."""
    cached_tokens: int = 0
    """Prompt tokens that were not computed again: the slot's cache already held them."""


GenerationEvent = TextDelta | Finished


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """How busy the engine is."""

    slots: int
    busy: int
    waiting: int
    drafted: int = 0
    """Tokens drafted by prompt lookup and checked by the model, since the engine started."""
    accepted: int = 0
    """Of those, the ones the model would have picked: kept."""


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A call an assistant turn made: ``arguments`` is the JSON text of its arguments."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True):
    """A chat turn as chat templates see it."""

    role: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    """What an assistant turn called."""
    tool_call_id: str | None = None
    """The call a ``tool`` turn answers."""
    name: str | None = None
    """The function a ``tool`` turn answers for."""


class Engine(Protocol):
    """Generates text for one loaded model."""

    kind: Literal["chat"]

    @property
    def context_size(self) -> int:
        """Tokens the context holds: prompt plus completion."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1``."""
        ...

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """The tokens the model sees for ``text``: special tokens parsed, BOS if the model wants."""
        ...

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (ids must be below ``vocab_size``)."""
        ...

    @property
    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls (its template's format, or the generic one)."""
        ...

    async def tokenize_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        tool_required: bool = False,
        prefill: str | None = None,
    ) -> list[int]:
        """The prompt tokens for a conversation, rendered with the model's chat template, with
        ``tools`` described to the model (``tool_required``: a call must follow), and
        ``prefill``, the start of the reply that the model continues (text, never parsed for
        control tokens).

        Raises ``InvalidRequest`` when the template refuses the conversation.
        """
        ...

    def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, owner: object = None
    ) -> AsyncIterator[GenerationEvent]:
        """Streams ``TextDelta``s, then one ``Finished``.

        ``max_tokens`` is clamped to what the context has room for (``Finished.reason`` is then
        ``"length"``). Closing the iterator early cancels the generation. Waiting requests get
        slots in turns by ``owner`` (a user), so one owner's backlog does not delay the others'.
        Raises, before any event: ``InvalidRequest`` for a grammar llama.cpp cannot compile,
        ``QueueFull`` when no slot frees up in time, ``EngineStopping`` during shutdown.
        """
        ...

    def stats(self) -> EngineStats:
        """Slots in use and requests waiting for one."""
        ...

    def stop_admitting(self) -> None:
        """From now on new generations are refused with ``EngineStopping`` (503)."""
        ...

    async def close(self, grace: float = 0.0) -> None:
        """Stops admitting, lets running generations finish for up to ``grace`` seconds, then
        cancels what is left and frees the model."""
        ...


class Embedder(Protocol):
    """Embeds texts with one loaded embedding model."""

    kind: Literal["embedding"]

    @property
    def dimensions(self) -> int:
        """The size of each vector."""
        ...

    @property
    def context_size(self) -> int:
        """Tokens one input may have."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1``."""
        ...

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """The tokens the model sees for ``text``."""
        ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[Any]:
        """One L2-normalised vector (a numpy array) per input, in order. Raises
        ``InvalidRequest`` naming ``input[i]`` for an empty or too long input."""
        ...

    def stats(self) -> EngineStats:
        """Batches in progress and requests waiting."""
        ...

    def stop_admitting(self) -> None:
        """From now on new requests are refused with ``EngineStopping`` (503)."""
        ...

    async def close(self, grace: float = 0.0) -> None:
        """Stops the worker and frees the model."""
        ...


LoadedModel = Engine | Embedder
"""What a loaded model is: a chat engine or an embedder (``kind`` says which)."""
