"""The llama.cpp engine: continuous batching over parallel sequence slots, on one thread.

One llama.cpp context holds ``parallel`` sequences, each with a full context window of its own. A
scheduler thread runs steps: every step decodes, in one batch, the next token of every running
sequence plus a chunk of the prompt of sequences still prefilling (so a long prompt never freezes
the running streams), then samples each sequence with its own sampler chain. On a CPU a batch of
several sequences costs little more than one, which is where the throughput comes from.

A slot keeps its KV cache after its request ends; a new request goes to the free slot whose cache
shares the longest prefix with its prompt, and only the rest is computed. Requests beyond the
slots wait in a bounded queue. A request whose consumer goes away is dropped at the next step.

Each sequence has a KV stream of its own (``kv_unified=False``), so attention only reads the
sequence's own cells, not every cached prompt. The price: llama.cpp batches, in one pass, only
sequences with consecutive ids given in order (``split_equal(sequential=True)``); running
sequences on sequence ids 0, 2 and 5 would cost three passes a step, no better than one at a
time. So the running sequences are kept on consecutive ids: new requests take a slot next to
them where their prompt does not favour another, and a sequence left apart (one before it
finished) is moved into the gap with a stream copy (``llama_memory_seq_cp``), a few milliseconds
once per admission against a whole pass every step. A shared stream (``kv_unified=True``) needs
no such care but makes every token attend over every cached prompt; measured here at 8 streams
of 128 tokens it was 12% slower, and more with long cached chats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from app.errors import EngineStopping, InvalidRequest, ModelUnavailable, QueueFull
from app.inference.chat_templates import FALLBACK_CHAT_TEMPLATES, ChatTemplate
from app.inference.engine import (
    ChatMessage,
    EngineStats,
    Finished,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)
from app.inference.llama_log import route_llama_log
from app.inference.model_files import check_gguf
from app.inference.text import StopMatcher, Utf8Stream
from app.inference.tokenizer import Cancelled, Fragment, Tokenizer

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Repetition penalties look this many tokens back (llama.cpp's default).
_PENALTY_WINDOW = 64
# Tokens decoded per step at most; prompt chunks fill what generating sequences leave.
_BATCH = 512

# Events go to the request's asyncio queue: this marker first (a slot was found), then
# TextDelta and Finished events, or an exception.
_ADMITTED = object()


@dataclass(eq=False)
class _Request:
    """One generation, from the queue to its last event."""

    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[object]
    outbox: list[tuple[_Request, object]]
    owner: object = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    grammar: Any = None
    """The compiled grammar sampler, until the slot's sampler chain takes it over."""

    def emit(self, event: object) -> None:
        """Queues ``event``; the scheduler delivers a whole step's events in one wake-up."""
        self.outbox.append((self, event))


@dataclass
class _Slot:
    """A sequence of the context: the tokens its KV cache holds, and what it is generating."""

    seq: int
    cached: list[int] = field(default_factory=list)
    request: _Request | None = None
    sampler: internals.LlamaSampler | None = None
    prefilled: int = 0
    max_tokens: int = 0
    generated: int = 0
    last_token: int = -1
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    pending: list[TokenLogprob] = field(default_factory=list)


class LlamaEngine:
    """``Engine`` over llama.cpp with ``parallel`` sequences decoded together."""

    def __init__(
        self,
        model: internals.LlamaModel,
        context: internals.LlamaContext,
        *,
        parallel: int,
        context_size: int,
        max_queue: int,
        queue_timeout: float,
        fallback_chat_format: str,
    ) -> None:
        self._model = model
        self._ctx = context
        self._context_size = context_size
        self._vocab = model.vocab
        self._vocab_size = int(model.n_vocab())
        self._max_queue = max_queue
        self._queue_timeout = queue_timeout
        self._tokenizer = Tokenizer(model)
        self._chat = self._chat_template(fallback_chat_format)
        # Tokenizing, detokenizing and compiling grammars: off the event loop, off the
        # scheduler's lock, and off the default thread pool that password hashing uses.
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llama-prep")
        self._busy_slots = 0  # read without the lock by stats()
        self._end_tokens = {t for t in (model.token_eos(), model.token_eot()) if t >= 0}
        self._batch = internals.LlamaBatch(n_tokens=_BATCH, embd=0, n_seq_max=1, verbose=False)
        self._memory = llama_cpp.llama_get_memory(context.ctx)
        self._slots = [_Slot(seq) for seq in range(parallel)]
        self._waiting: collections.deque[_Request] = collections.deque()
        self._served: dict[object, int] = {}  # owner -> turn of its latest admission
        self._turn = 0
        # Filled by the scheduler thread only; delivered by _deliver after each iteration.
        self._outbox: list[tuple[_Request, object]] = []
        self._lock = threading.Condition()
        self._admitting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    @classmethod
    async def load(
        cls,
        path: Path,
        *,
        context_size: int,
        threads: int | None = None,
        parallel: int = 1,
        max_queue: int = 16,
        queue_timeout: float = 60.0,
        fallback_chat_format: str = "zephyr",
    ) -> LlamaEngine:
        """Loads the GGUF at ``path`` off the event loop.

        Raises ``ModelUnavailable`` with a sentence naming the file if it is not a loadable GGUF.
        """
        model, context = await asyncio.to_thread(
            _load, path, context_size, threads or _cpu_count(), parallel
        )
        return cls(
            model,
            context,
            parallel=parallel,
            context_size=context_size,
            max_queue=max_queue,
            queue_timeout=queue_timeout,
            fallback_chat_format=fallback_chat_format,
        )

    def _chat_template(self, fallback: str) -> ChatTemplate:
        template = self._model.metadata().get("tokenizer.chat_template")
        if not template:
            logger.info("the model has no chat template; using the %s format", fallback)
            template = FALLBACK_CHAT_TEMPLATES[fallback]
        return ChatTemplate(
            template, bos_token=self._tokenizer.bos_text, eos_token=self._tokenizer.eos_text
        )

    # --- what the services ask -----------------------------------------------------------------

    @property
    def context_size(self) -> int:
        return self._context_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def stats(self) -> EngineStats:
        # No lock: /health must answer whatever the scheduler is doing.
        return EngineStats(
            slots=len(self._slots), busy=self._busy_slots, waiting=len(self._waiting)
        )

    async def _prepare(self, work: Callable[..., _T], *args: Any) -> _T:
        """Runs ``work(*args, cancelled)`` on the preparation threads; if the caller is
        cancelled (its client left), ``cancelled`` is set so the work can stop early."""
        cancelled = threading.Event()
        call = functools.partial(work, *args, cancelled)
        future = asyncio.get_running_loop().run_in_executor(self._prep, call)
        try:
            return await future
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await self._prepare(self._tokenize, text, add_special)

    def _tokenize(self, text: str, add_special: bool, cancelled: threading.Event) -> list[int]:
        return self._tokenizer.encode(
            [Fragment(text, trusted=True)], add_special=add_special, cancelled=cancelled
        )

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return await self._prepare(self._detokenize, list(tokens))

    def _detokenize(self, tokens: list[int], _: threading.Event) -> str:
        return self._tokenizer.decode(tokens)

    async def tokenize_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        try:
            return await self._prepare(self._tokenize_chat, messages)
        except Cancelled:
            raise asyncio.CancelledError() from None

    def _tokenize_chat(
        self, messages: Sequence[ChatMessage], cancelled: threading.Event
    ) -> list[int]:
        # What users wrote stays text, even where it spells a control token.
        fragments = self._chat.fragments(messages)
        return self._tokenizer.encode(fragments, cancelled=cancelled)

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, owner: object = None
    ) -> AsyncIterator[GenerationEvent]:
        events: asyncio.Queue[object] = asyncio.Queue()
        request = _Request(
            list(prompt_tokens), params, asyncio.get_running_loop(), events, self._outbox, owner
        )
        if params.grammar is not None:
            # Compiled here, so that a slow grammar holds up nobody else.
            request.grammar = await self._prepare(self._compile_grammar, params.grammar)
        try:
            self._enqueue(request)
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
            request.cancelled.set()
            with self._lock:  # gone before it got a slot: free its place in the queue now
                if request in self._waiting:
                    self._waiting.remove(request)
                grammar, request.grammar = request.grammar, None
            if grammar is not None:  # never admitted: the grammar is still this request's
                llama_cpp.llama_sampler_free(grammar)

    def _compile_grammar(self, grammar: str, _: threading.Event) -> Any:
        compiled = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not compiled:  # llama.cpp could not parse it; adding NULL to a chain would crash
            raise InvalidRequest(
                "The requested output format could not be compiled into a grammar.",
                param="response_format",
            )
        return compiled

    def _enqueue(self, request: _Request) -> None:
        with self._lock:
            if not self._admitting:
                raise EngineStopping()
            if len(self._waiting) >= self._max_queue and not self._free_slot():
                raise QueueFull(retry_after=self._retry_after())
            self._waiting.append(request)
            self._lock.notify_all()

    def _free_slot(self) -> bool:
        return any(slot.request is None for slot in self._slots)

    async def _wait_for_slot(self, request: _Request, events: asyncio.Queue[object]) -> None:
        """Waits for the scheduler to admit the request; a 429 after the queue timeout."""
        try:
            first = await asyncio.wait_for(events.get(), self._queue_timeout)
        except TimeoutError:
            with self._lock:
                if request in self._waiting:
                    self._waiting.remove(request)
                    raise QueueFull(retry_after=self._retry_after(), waited=True) from None
            first = await events.get()  # admitted just as the time ran out
        if first is not _ADMITTED:  # refused on admission (a grammar llama.cpp rejects)
            assert isinstance(first, BaseException)
            raise first

    def _retry_after(self) -> int:
        return max(1, int(self._queue_timeout / 4))

    def stop_admitting(self) -> None:
        """New requests get a 503 from now on; running and waiting ones carry on."""
        with self._lock:
            self._admitting = False

    async def close(self, grace: float = 0.0) -> None:
        """Stops admitting, lets running work finish for up to ``grace`` seconds, then frees."""
        self.stop_admitting()
        await asyncio.to_thread(self._wait_idle, grace)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        await asyncio.to_thread(self._thread.join)
        self._prep.shutdown(wait=True, cancel_futures=True)
        self._batch.close()
        self._ctx.close()
        self._model.close()

    def _wait_idle(self, timeout: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._busy() and not self._waiting, timeout)

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._busy():
                    self._lock.wait()
                if self._stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode: fail what was running, keep serving
                logger.exception("a decode step failed")
                for slot in self._slots:
                    if slot.request is not None:
                        slot.request.emit(exc)
                        self._release(slot, keep_cache=False)
            self._deliver()
        for slot in self._slots:
            if slot.request is not None:
                slot.request.emit(EngineStopping())
                self._release(slot, keep_cache=False)
        for request in self._waiting:
            request.emit(EngineStopping())
        self._deliver()

    def _deliver(self) -> None:
        """Hands the step's events to their event loops: one wake-up per loop, not per token."""
        if not self._outbox:
            return
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Request, object]]] = {}
        for request, event in self._outbox:
            batches.setdefault(request.loop, []).append((request, event))
        self._outbox.clear()
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(_put_all, batch)

    def _busy(self) -> bool:
        return any(slot.request is not None for slot in self._slots)

    def _admit(self) -> None:
        """Moves waiting requests into free slots (called with the lock held)."""
        free = [slot for slot in self._slots if slot.request is None]
        taken = {slot.seq for slot in self._slots if slot.request is not None}
        while free and self._waiting:
            request = self._next_waiting()
            if request.cancelled.is_set():
                continue
            # The longest shared prefix wins; on a tie, a slot that keeps the running sequences
            # on consecutive ids (see the module's docstring), then the one with the least
            # cached, so that an unrelated prompt does not evict a cache a later one could reuse.
            slot = max(
                free,
                key=lambda s: (
                    _common_prefix(s.cached, request.prompt),
                    _consecutive(taken | {s.seq}),
                    -len(s.cached),
                ),
            )
            try:
                self._start(slot, request)
            except InvalidRequest as exc:
                request.emit(exc)
                continue
            request.emit(_ADMITTED)
            free.remove(slot)
            taken.add(slot.seq)

    def _next_waiting(self) -> _Request:
        """Takes the waiting request whose owner was served least recently (never: first);
        among one owner's requests, the oldest. Owners take turns, whatever their backlog."""
        best, request = min(
            enumerate(self._waiting), key=lambda e: (self._served.get(e[1].owner, 0), e[0])
        )
        del self._waiting[best]
        self._turn += 1
        self._served[request.owner] = self._turn
        if len(self._served) > 10_000:  # owners long gone: forget them all
            self._served = {request.owner: self._turn}
        return request

    def _start(self, slot: _Slot, request: _Request) -> None:
        params = request.params
        grammar, request.grammar = request.grammar, None
        slot.sampler = self._sampler(params, grammar)
        # Keep the cached prefix, but evaluate at least the last prompt token again so that
        # there are fresh logits to sample the first token from.
        keep = min(_common_prefix(slot.cached, request.prompt), len(request.prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1):
            keep = 0
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        slot.cached = slot.cached[:keep]
        slot.request = request
        self._busy_slots += 1
        slot.prefilled = keep
        slot.max_tokens = min(params.max_tokens, self._context_size - len(request.prompt))
        slot.generated = 0
        slot.utf8 = Utf8Stream()
        slot.stops = StopMatcher(params.stop)
        slot.pending = []

    def _step(self) -> None:
        """One decode of the next token of each running sequence plus prompt chunks."""
        batch = self._batch.batch
        batch.n_tokens = 0
        to_sample: list[tuple[_Slot, int]] = []

        def add(slot: _Slot, token: int, logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i] = token
            batch.pos[i] = len(slot.cached)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq
            batch.logits[i] = logits
            batch.n_tokens = i + 1
            slot.cached.append(token)
            if logits:
                to_sample.append((slot, i))

        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled.is_set():
                self._release(slot, keep_cache=True)
        self._keep_consecutive()
        # In sequence id order: each sequence's tokens together, the first ones ascending.
        running = [(s, s.request) for s in self._slots if s.request is not None]
        # Every generating sequence gets its next token; prompt chunks share what is left.
        room = _BATCH - sum(slot.prefilled == len(request.prompt) for slot, request in running)
        for slot, request in running:
            if slot.prefilled == len(request.prompt):
                add(slot, slot.last_token, True)
                continue
            if room <= 0:
                continue
            chunk = request.prompt[slot.prefilled : slot.prefilled + room]
            room -= len(chunk)
            slot.prefilled += len(chunk)
            done = slot.prefilled == len(request.prompt)
            for j, token in enumerate(chunk):
                add(slot, token, done and j == len(chunk) - 1)
        if batch.n_tokens == 0:
            return
        self._ctx.decode(self._batch)
        for slot, index in to_sample:
            self._sample(slot, index)

    def _keep_consecutive(self) -> None:
        """Moves running sequences so that their ids are consecutive (see the module's docstring).

        The window of ids that already holds the most running sequences is kept (on a tie, the
        one whose idle slots cache the least); each running sequence outside it moves into one of
        the window's idle slots, whose cache is given up. The slot objects swap sequence ids, so
        the request, sampler and cached tokens travel with the sequence."""
        running = [slot for slot in self._slots if slot.request is not None]
        if not running or _consecutive({slot.seq for slot in running}):
            return
        width = len(running)

        def score(start: int) -> tuple[int, int]:
            window = self._slots[start : start + width]
            idle = [slot for slot in window if slot.request is None]
            return width - len(idle), -sum(len(slot.cached) for slot in idle)

        start = max(range(len(self._slots) - width + 1), key=score)
        window = self._slots[start : start + width]
        holes = [slot for slot in window if slot.request is None]
        strays = [slot for slot in running if slot not in window]
        for stray, hole in zip(strays, holes, strict=True):
            # A whole-stream copy, made by llama.cpp before the next decode; then the stray's
            # old stream is emptied and becomes the idle slot's.
            llama_cpp.llama_memory_seq_cp(self._memory, stray.seq, hole.seq, -1, -1)
            llama_cpp.llama_memory_seq_rm(self._memory, stray.seq, -1, -1)
            stray.seq, hole.seq = hole.seq, stray.seq
            hole.cached = []
        with self._lock:  # stats() reads the list from other threads
            self._slots.sort(key=lambda slot: slot.seq)

    def _sample(self, slot: _Slot, index: int) -> None:
        request, sampler = slot.request, slot.sampler
        assert request is not None
        assert sampler is not None
        params = request.params
        if slot.max_tokens <= 0:
            self._finish(slot, "length", hit=False)
            return
        token = sampler.sample(self._ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop", hit=False)
            return
        slot.generated += 1
        piece = self._piece(token)
        if params.logprobs is not None:
            slot.pending.append(self._logprob(index, token, piece, params.logprobs))
        text, hit = slot.stops.feed(slot.utf8.feed(piece))
        if hit:
            slot.pending.clear()  # those tokens made the stop sequence, which is not returned
        if text:
            request.emit(TextDelta(text, tuple(slot.pending), slot.generated))
            slot.pending.clear()
        if hit:
            self._finish(slot, "stop", hit=True)
        elif slot.generated >= slot.max_tokens:
            self._finish(slot, "length", hit=False)
        else:
            slot.last_token = token

    def _finish(self, slot: _Slot, reason: FinishReason, *, hit: bool) -> None:
        request = slot.request
        assert request is not None
        if not hit:
            # Release what was held back: an unfinished character, a partial stop sequence.
            tail, hit = slot.stops.feed(slot.utf8.flush())
            tail = tail if hit else tail + slot.stops.flush()
            if tail or slot.pending:
                request.emit(TextDelta(tail, tuple(slot.pending), slot.generated))
        request.emit(
            Finished(
                reason=reason,
                prompt_tokens=len(request.prompt),
                completion_tokens=slot.generated,
            )
        )
        self._release(slot, keep_cache=True)

    def _release(self, slot: _Slot, *, keep_cache: bool) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.cached = []
        with self._lock:
            if slot.request is not None:
                self._busy_slots -= 1
            slot.sampler, slot.request = None, None
            self._lock.notify_all()  # close() may be waiting for the engine to go idle

    def _piece(self, token: int) -> bytes:
        piece: bytes = self._model.detokenize([token])
        return piece

    def _sampler(self, params: SamplingParams, grammar: Any = None) -> internals.LlamaSampler:
        """A fresh sampler chain for one generation, in llama.cpp's usual order; it takes over
        ``grammar`` (a compiled grammar sampler)."""
        sampler = internals.LlamaSampler()
        bias = dict(params.logit_bias)
        if params.ignore_eos:
            bias.update((token, float("-inf")) for token in self._end_tokens)
        if bias:
            sampler.add_logit_bias(self._vocab_size, bias)
        if params.repeat_penalty != 1 or params.presence_penalty or params.frequency_penalty:
            sampler.add_penalties(
                self._vocab_size,
                _PENALTY_WINDOW,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        if grammar is not None:
            llama_cpp.llama_sampler_chain_add(sampler.sampler, grammar)
        if params.temperature <= 0:
            sampler.add_greedy()
        else:
            if params.top_k > 0:
                sampler.add_top_k(params.top_k)
            sampler.add_top_p(params.top_p, 1)
            sampler.add_min_p(params.min_p, 1)
            sampler.add_temp(params.temperature)
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    def _logprob(self, index: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        """The token's log probability under the model, from the logits it was sampled from."""
        pointer = self._ctx.get_logits_ith(index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._vocab_size,)).astype(np.float64)
        peak = logits.max()
        logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
        alternatives: tuple[TopLogprob, ...] = ()
        if top > 0:
            best = np.argpartition(-logprobs, top)[:top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = tuple(self._top(int(t), float(logprobs[t])) for t in best)
        return TokenLogprob(
            token=piece.decode("utf-8", errors="replace"),
            bytes=tuple(piece),
            logprob=float(logprobs[token]),
            top=alternatives,
        )

    def _top(self, token: int, logprob: float) -> TopLogprob:
        piece = self._piece(token)
        return TopLogprob(piece.decode("utf-8", errors="replace"), tuple(piece), logprob)


def _put_all(batch: list[tuple[_Request, object]]) -> None:
    for request, event in batch:
        request.events.put_nowait(event)


def _consecutive(seqs: set[int]) -> bool:
    """Whether the sequence ids form one run (llama.cpp then batches them in one pass)."""
    return not seqs or max(seqs) - min(seqs) + 1 == len(seqs)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    if not limit:
        return 0
    differs = np.flatnonzero(np.asarray(a[:limit]) != np.asarray(b[:limit]))
    return int(differs[0]) if differs.size else limit


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load(
    path: Path, context_size: int, threads: int, parallel: int
) -> tuple[internals.LlamaModel, internals.LlamaContext]:
    check_gguf(path)
    llama_cpp.llama_backend_init()
    route_llama_log()
    try:
        model = internals.LlamaModel(
            path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
        )
    except ValueError:
        raise ModelUnavailable(
            f"llama.cpp could not load the model file {path}; it may be truncated or of an "
            "unsupported architecture."
        ) from None
    params = llama_cpp.llama_context_default_params()
    # Each sequence gets a whole context window of its own.
    params.n_ctx = context_size * parallel
    params.n_seq_max = parallel
    params.kv_unified = False
    params.n_batch = _BATCH
    params.n_ubatch = _BATCH
    params.n_threads = threads
    params.n_threads_batch = threads
    try:
        context = internals.LlamaContext(model=model, params=params, verbose=False)
    except ValueError:
        model.close()
        raise ModelUnavailable(
            f"llama.cpp could not create a context for {path} ({parallel} x {context_size} "
            "tokens); lower APP_PARALLEL or APP_CONTEXT_SIZE."
        ) from None
    return model, context
