"""The llama.cpp engine: what the services ask of a model, over the batching ``Scheduler``.

Prompts are tokenized (and chat templates rendered, and grammars compiled) here, on a small pool
of threads of the engine's own: off the event loop, off the scheduler's lock, and off the default
thread pool that password hashing uses. Short inputs are the exception (``INLINE_CHARS`` in one
turn of the event loop at most): they are tokenized on the loop, where they take less time than
the hop to a thread takes on a machine whose cores decode. Generation is the scheduler's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import llama_cpp
import msgspec
from llama_cpp import _internals as internals

from app.errors import InvalidRequest, QueueFull
from app.inference.chat_templates import ChatTemplate
from app.inference.engine import (
    ChatMessage,
    EngineConfig,
    EngineStats,
    Finished,
    GenerationEvent,
    SamplingParams,
    TextDelta,
)
from app.inference.llama_load import load_model
from app.inference.sampling import compile_grammar, free_grammar
from app.inference.scheduler import Scheduler
from app.inference.tokenizer import Cancelled, Fragment, Tokenizer
from app.inference.tool_formats import ToolFormat, ToolSpec
from app.inference.waiting import ADMITTED, Request

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

INLINE_CHARS = 1000
"""Characters of input tokenized on the event loop in one turn of it at most (0.2-0.3 ms
measured for a chat of this size, 30 us for a short completion prompt), whatever the number of
requests or prompts in that turn; the rest goes to the preparation threads."""


class LlamaEngine:
    """``Engine`` over llama.cpp with ``config.parallel`` sequences decoded together."""

    kind: Literal["chat"] = "chat"

    def __init__(
        self, model: internals.LlamaModel, context: internals.LlamaContext, config: EngineConfig
    ) -> None:
        self._model = model
        self._ctx = context
        self._config = config
        self._vocab_size = int(model.n_vocab())
        self._tokenizer = Tokenizer(model)
        self._chat = ChatTemplate.for_model(
            model.metadata(),
            override=config.chat_template,
            fallback=config.chat_format_fallback,
            bos_token=self._tokenizer.bos_text,
            eos_token=self._tokenizer.eos_text,
        )
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llama-prep")
        self._inlined = 0  # characters tokenized on the event loop in its current turn
        self._scheduler = Scheduler(
            model,
            context,
            parallel=config.parallel,
            context_size=config.context_size,
            max_queue=config.max_queue,
            queue_timeout=config.queue_timeout,
            preserved=self._call_markers(),
            draft_tokens=config.draft_tokens if _can_rewind(model) else 0,
        )

    @classmethod
    async def load(cls, path: Path, config: EngineConfig) -> LlamaEngine:
        """Loads the GGUF at ``path`` off the event loop.

        Raises ``ModelUnavailable`` with a sentence naming the file if it is not a loadable GGUF.
        """
        model, context = await asyncio.to_thread(load_model, path, config)
        return cls(model, context, config)

    def _call_markers(self) -> frozenset[int]:
        """The control tokens the tool format writes calls with (``<tool_call>`` in Qwen's
        vocabulary): their text must show in the output, where calls are read from it."""
        tool_format = self._chat.tool_format
        if not tool_format.native:
            return frozenset()
        markers = [p for p in tool_format.opening if p] + [tool_format.call_suffix]
        markers.append(tool_format.closing)
        tokens = set()
        for marker in filter(None, markers):
            ids = self._tokenizer.encode_text(marker.strip(), add_special=False)
            if len(ids) == 1 and self._tokenizer.spells_control_token(marker):
                tokens.add(ids[0])
        return frozenset(tokens)

    @property
    def context_size(self) -> int:
        return self._config.context_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def tool_format(self) -> ToolFormat:
        return self._chat.tool_format

    def stats(self) -> EngineStats:
        return self._scheduler.stats()

    # --- preparing requests --------------------------------------------------------------------

    async def _prepare(self, work: Callable[..., _T], *args: Any, size: int | None = None) -> _T:
        """Runs ``work(*args, cancelled)`` on the preparation threads; if the caller is
        cancelled (its client left), ``cancelled`` is set so the work can stop early.

        Work on ``size`` characters of input that fit what is left of this turn of the event
        loop's ``INLINE_CHARS`` runs here instead: a fraction of a millisecond, less than the hop
        to a thread costs on a machine whose cores are decoding (the first token of every short
        request waited for it). ``size`` None: always on the threads."""
        cancelled = threading.Event()
        if size is not None and self._may_inline(size):
            return work(*args, cancelled)
        call = functools.partial(work, *args, cancelled)
        future = asyncio.get_running_loop().run_in_executor(self._prep, call)
        try:
            return await future
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _may_inline(self, size: int) -> bool:
        """Whether work on ``size`` characters may run on the event loop now: within this turn
        of the loop's ``INLINE_CHARS``."""
        size = max(size, 1)
        if self._inlined + size > INLINE_CHARS:
            return False
        if not self._inlined:  # the next turn of the loop starts afresh
            asyncio.get_running_loop().call_soon(self._turn_ended)
        self._inlined += size
        return True

    def _turn_ended(self) -> None:
        self._inlined = 0

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await self._prepare(self._tokenize, text, add_special, size=len(text))

    def _tokenize(self, text: str, add_special: bool, cancelled: threading.Event) -> list[int]:
        return self._tokenizer.encode(
            [Fragment(text, trusted=True)], add_special=add_special, cancelled=cancelled
        )

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return await self._prepare(self._detokenize, list(tokens))

    def _detokenize(self, tokens: list[int], _: threading.Event) -> str:
        return self._tokenizer.decode(tokens)

    async def tokenize_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        tool_required: bool = False,
        prefill: str | None = None,
    ) -> list[int]:
        try:
            return await self._prepare(
                self._tokenize_chat,
                messages,
                tools,
                tool_required,
                prefill,
                size=None if tools else _size(messages) + len(prefill or ""),
            )
        except Cancelled:
            raise asyncio.CancelledError() from None

    def _tokenize_chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        tool_required: bool,
        prefill: str | None,
        cancelled: threading.Event,
    ) -> list[int]:
        if self._chat.tool_format.native:
            # Native templates write tool definitions and past calls themselves, as template
            # text, where a control token's spelling would be parsed as the token.
            self._refuse_control_text(tools, messages)
        # What users wrote stays text, even where it spells a control token.
        fragments = self._chat.fragments(messages, tools, tool_required=tool_required)
        if prefill:
            fragments.append(Fragment(prefill, trusted=False))
        return self._tokenizer.encode(fragments, cancelled=cancelled)

    def _refuse_control_text(
        self, tools: Sequence[ToolSpec], messages: Sequence[ChatMessage]
    ) -> None:
        for index, tool in enumerate(tools):
            if self._tokenizer.spells_control_token(msgspec.json.encode(tool).decode()):
                raise InvalidRequest(
                    "A tool definition spells one of the model's control tokens.",
                    param=f"tools[{index}]",
                )
        for index, message in enumerate(messages):
            # Everything of a turn but its content (which stays text) is template text.
            fields = [message.tool_call_id or "", message.name or ""]
            for call in message.tool_calls:
                # The template writes the decoded arguments, where JSON escapes (\u003c) are
                # the characters they stand for.
                fields += (call.id, call.name, call.arguments, _decoded(call.arguments))
            if self._tokenizer.spells_control_token("\n".join(fields)):
                raise InvalidRequest(
                    "A tool call or its id spells one of the model's control tokens.",
                    param=f"messages[{index}]",
                )

    def _compile_grammar(self, grammar: str, _: threading.Event) -> Any:
        return compile_grammar(self._model.vocab, grammar)

    # --- generating ----------------------------------------------------------------------------

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, owner: object = None
    ) -> AsyncIterator[GenerationEvent]:
        events: asyncio.Queue[object] = asyncio.Queue()
        request = Request(list(prompt_tokens), params, asyncio.get_running_loop(), events, owner)
        if params.grammar is not None:
            # Compiled here, so that a slow grammar holds up nobody else.
            request.grammar = await self._prepare(self._compile_grammar, params.grammar)
        try:
            self._scheduler.submit(request)
            await self._wait_for_slot(request, events)
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                assert isinstance(event, TextDelta | Finished)
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            grammar = self._scheduler.withdraw(request)
            if grammar is not None:  # never admitted: the grammar is still this request's
                free_grammar(grammar)

    async def _wait_for_slot(self, request: Request, events: asyncio.Queue[object]) -> None:
        """Waits for the scheduler to admit the request; a 429 after the queue timeout."""
        try:
            first = await asyncio.wait_for(events.get(), self._scheduler.queue_timeout)
        except TimeoutError:
            if self._scheduler.expire(request):
                retry = self._scheduler.retry_after()
                raise QueueFull(retry_after=retry, waited=True) from None
            first = await events.get()  # admitted just as the time ran out
        if first is not ADMITTED:  # refused on admission
            assert isinstance(first, BaseException)
            raise first

    # --- stopping ------------------------------------------------------------------------------

    def stop_admitting(self) -> None:
        """New requests get a 503 from now on; running and waiting ones carry on."""
        self._scheduler.stop_admitting()

    async def close(self, grace: float = 0.0) -> None:
        """Stops admitting, lets running work finish for up to ``grace`` seconds, then frees."""
        await asyncio.to_thread(self._scheduler.stop, grace)
        self._prep.shutdown(wait=True, cancel_futures=True)
        self._ctx.close()
        self._model.close()


def _size(messages: Sequence[ChatMessage]) -> int:
    """About how much work tokenizing a chat is, in characters (a turn costs some of its own)."""
    return sum(
        64
        + len(m.content or "")
        + len(m.tool_call_id or "")
        + len(m.name or "")
        + sum(len(c.id) + len(c.name) + len(c.arguments) for c in m.tool_calls)
        for m in messages
    )


def _can_rewind(model: internals.LlamaModel) -> bool:
    """Whether a sequence's last tokens can be taken out of its cache, which drafting needs
    (the refused tokens go): not in the state of a recurrent or hybrid model (Mamba, RWKV)."""
    return not (
        llama_cpp.llama_model_is_recurrent(model.model)
        or llama_cpp.llama_model_is_hybrid(model.model)
    )


def _decoded(arguments: str) -> str:
    """Tool call arguments as a template writes them: decoded, then written out with every
    character as itself (nothing for text that is not JSON, which templates leave as it is)."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except (ValueError, RecursionError):
        return ""
