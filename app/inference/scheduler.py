"""The scheduler: continuous batching over parallel sequence slots, on one thread.

One llama.cpp context holds ``parallel`` sequences, each with a full context window of its own. A
scheduler thread runs steps: every step decodes, in one batch, the next token of every running
sequence plus a chunk of the prompt of sequences still prefilling (so a long prompt never freezes
the running streams), then samples each sequence with its own sampler chain. On a CPU a batch of
several sequences costs little more than one, which is where the throughput comes from.

A generating sequence whose last tokens occurred earlier in its prompt or output may also send a
draft of what followed them (prompt lookup, ``drafting``): the draft is decoded in the same step
and its tokens are kept up to the first one the sequence's own sampler would not have picked, so
the text is the same as without it.

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
import contextlib
import functools
import logging
import re
import threading
import time
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

from app.errors import EngineStopping, InvalidRequest, QueueFull
from app.inference.drafting import Drafter
from app.inference.engine import (
    EngineStats,
    FinishReason,
)
from app.inference.llama_load import BATCH
from app.inference.sampling import GrammarPicker, sampler_chain, token_logprob
from app.inference.slots import Slot, best_slot, common_prefix, keep_consecutive
from app.inference.text import TokenStream
from app.inference.waiting import ADMITTED, FairQueue, Request

logger = logging.getLogger(__name__)

MAX_STEP_DRAFTS = 64
"""Drafted tokens in one step at most: each needs its logits, and llama.cpp keeps an output
buffer as large as the most logits a step ever asked for (vocabulary x 4 bytes each)."""


class Scheduler:
    """Runs the sequences of one llama.cpp context on a thread of its own."""

    def __init__(
        self,
        model: internals.LlamaModel,
        context: internals.LlamaContext,
        *,
        parallel: int,
        context_size: int,
        max_queue: int,
        queue_timeout: float,
        preserved: frozenset[int] = frozenset(),
        draft_tokens: int = 0,
    ) -> None:
        self._model = model
        self._drafter = Drafter(draft_tokens)
        self._preserved = preserved
        self._ctx = context
        self._context_size = context_size
        self._vocab = model.vocab
        self._vocab_size = int(model.n_vocab())
        self._max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._end_tokens = {t for t in (model.token_eos(), model.token_eot()) if t >= 0}
        self._batch = internals.LlamaBatch(n_tokens=BATCH, embd=0, n_seq_max=1, verbose=False)
        self._memory = llama_cpp.llama_get_memory(context.ctx)
        self._slots = [Slot(seq) for seq in range(parallel)]
        self._busy_slots = 0  # read without the lock by stats()
        self._waiting = FairQueue()
        # Filled by the scheduler thread only; delivered by _deliver after each iteration.
        self._outbox: list[tuple[Request, object]] = []
        self._lock = threading.Condition()
        self._admitting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    # --- what the engine asks ------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Slots in use and requests waiting; without the lock, so it never waits."""
        drafted, accepted = self._drafter.counts  # one read: kept never above drafted
        return EngineStats(
            slots=len(self._slots),
            busy=self._busy_slots,
            waiting=len(self._waiting),
            drafted=drafted,
            accepted=accepted,
        )

    def submit(self, request: Request) -> None:
        """Queues ``request``; raises ``EngineStopping`` or ``QueueFull``."""
        with self._lock:
            if not self._admitting:
                raise EngineStopping()
            free = any(slot.request is None for slot in self._slots)
            if len(self._waiting) >= self._max_queue and not free:
                raise QueueFull(retry_after=self.retry_after())
            self._waiting.append(request)
            self._lock.notify_all()

    def expire(self, request: Request) -> bool:
        """Takes ``request`` out of the queue if it is still waiting; whether it was."""
        with self._lock:
            return self._waiting.discard(request)

    def withdraw(self, request: Request) -> Any:
        """``request`` is over: out of the queue if it is still there; returns its grammar if
        no slot took it over (the caller frees it)."""
        request.cancelled.set()
        with self._lock:
            self._waiting.discard(request)
            grammar, request.grammar = request.grammar, None
        return grammar

    def retry_after(self) -> int:
        """Seconds a refused request should wait before it tries again."""
        return max(1, int(self.queue_timeout / 4))

    def stop_admitting(self) -> None:
        """New requests are refused from now on; running and waiting ones carry on."""
        with self._lock:
            self._admitting = False

    def stop(self, grace: float) -> None:
        """Lets running work finish for up to ``grace`` seconds, then stops the thread (blocks:
        call it off the event loop)."""
        self.stop_admitting()
        with self._lock:
            self._lock.wait_for(lambda: not self._busy() and not self._waiting, grace)
            self._stopping = True
            self._lock.notify_all()
        self._thread.join()
        self._batch.close()

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._busy():
                    self._lock.wait()
                if self._stopping:
                    break
                # Slots whose client left are freed first: a request waiting for one gets it
                # in this step, not the next.
                for slot in self._slots:
                    if slot.request is not None and slot.request.cancelled.is_set():
                        self._release(slot, keep_cache=True)
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode: fail what was running, keep serving
                logger.exception("a decode step failed")
                for slot in self._slots:
                    if slot.request is not None:
                        self._emit(slot.request, exc)
                        self._release(slot, keep_cache=False)
            self._deliver()
        for slot in self._slots:
            if slot.request is not None:
                self._emit(slot.request, EngineStopping())
                self._release(slot, keep_cache=False)
        for request in self._waiting:
            self._emit(request, EngineStopping())
        self._deliver()

    def _deliver(self) -> None:
        """Hands the step's events to their event loops: one wake-up per loop, not per token."""
        if not self._outbox:
            return
        batches: dict[asyncio.AbstractEventLoop, list[tuple[Request, object]]] = {}
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
            request = self._waiting.pop()
            if request.cancelled.is_set():
                continue
            slot = best_slot(free, taken, request.prompt)
            try:
                self._start(slot, request)
            except InvalidRequest as exc:
                self._emit(request, exc)
                continue
            self._emit(request, ADMITTED)
            free.remove(slot)
            taken.add(slot.seq)

    def _start(self, slot: Slot, request: Request) -> None:
        params = request.params
        grammar, request.grammar = request.grammar, None
        # Under a grammar the end of the text is the grammar's to decide: banning it too
        # (ignore_eos) would leave no token to pick once the grammar is complete. Before a lazy
        # grammar's opening, the picker bans it.
        ends = () if grammar is not None else self._end_tokens
        slot.sampler = sampler_chain(params, vocab_size=self._vocab_size, end_tokens=ends)
        if grammar is not None:
            opening = params.grammar_opening
            slot.picker = GrammarPicker(
                slot.sampler,
                grammar,
                self._vocab_size,
                opening=re.compile(opening.encode()) if opening is not None else None,
                piece_of=self._piece,
                free_bans=self._end_tokens if params.ignore_eos else (),
            )
        # Keep the cached prefix, but evaluate at least the last prompt token again so that
        # there are fresh logits to sample the first token from.
        keep = min(common_prefix(slot.cached, request.prompt), len(request.prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, keep, -1):
            keep = 0
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        slot.cached = slot.cached[:keep]
        slot.request = request
        self._busy_slots += 1
        slot.prefilled = keep
        slot.stream = TokenStream(
            functools.partial(self._emit, request),
            stops=params.stop,
            max_tokens=min(params.max_tokens, self._context_size - len(request.prompt)),
            prompt_tokens=len(request.prompt),
            cached_tokens=keep,
            grammar=slot.picker,
        )
        slot.lookup = self._drafter.lookup(request.prompt)

    def _step(self) -> None:
        """One decode of the next token of each running sequence (and of its draft, if it
        drafts) plus prompt chunks."""
        batch = self._batch.batch
        batch.n_tokens = 0
        to_sample: list[tuple[Slot, int]] = []

        def add(slot: Slot, token: int, logits: bool, *, sample: bool) -> None:
            i = batch.n_tokens
            batch.token[i] = token
            batch.pos[i] = len(slot.cached)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq
            batch.logits[i] = logits
            batch.n_tokens = i + 1
            slot.cached.append(token)
            if sample:
                to_sample.append((slot, i))

        if keep_consecutive(self._slots, self._memory):
            with self._lock:  # stats() and submit() read the list from other threads
                self._slots.sort(key=lambda slot: slot.seq)
        # In sequence id order: each sequence's tokens together, the first ones ascending.
        running = [(s, s.request) for s in self._slots if s.request is not None]
        generating = [slot for slot, request in running if slot.prefilled == len(request.prompt)]
        # A step that computes a prompt chunk is that chunk's: it drafts nothing.
        prefilling = len(generating) < len(running)
        self._plan_drafts([] if prefilling else generating)
        # Every generating sequence gets its next token and its draft; prompt chunks share
        # what is left.
        room = BATCH - sum(1 + len(slot.draft) for slot in generating)
        for slot, request in running:
            if slot.prefilled == len(request.prompt):
                add(slot, slot.last_token, True, sample=True)
                for token in slot.draft:
                    add(slot, token, True, sample=False)
                continue
            if room <= 0:
                continue
            chunk = request.prompt[slot.prefilled : slot.prefilled + room]
            room -= len(chunk)
            slot.prefilled += len(chunk)
            done = slot.prefilled == len(request.prompt)
            for j, token in enumerate(chunk):
                last = done and j == len(chunk) - 1
                add(slot, token, last, sample=last)
        if batch.n_tokens == 0:
            return
        started = time.perf_counter()
        self._ctx.decode(self._batch)
        if not prefilling:  # every token with its logits: what a step of this size costs
            seconds = time.perf_counter() - started
            self._drafter.costs.observe(len(generating), batch.n_tokens, seconds)
        for slot, index in to_sample:
            if slot.draft:
                self._verify(slot, index)
            else:
                self._sample(slot, index)

    def _plan_drafts(self, drafting: list[Slot]) -> None:
        """Sets the draft of each slot in ``drafting`` for this step (``Drafter.drafts``); the
        other slots draft nothing."""
        for slot in self._slots:
            slot.draft, slot.match = [], 0
        # No token past the request's last: the one sampled after the draft is free.
        wanted = []
        for slot in drafting:
            assert slot.stream is not None
            wanted.append((slot.lookup, slot.stream.remaining - 1))
        room = min(BATCH - len(drafting), MAX_STEP_DRAFTS)
        drafts = self._drafter.drafts(wanted, room=room)
        for slot, (draft, match) in zip(drafting, drafts, strict=True):
            slot.draft, slot.match = draft, match

    def _verify(self, slot: Slot, index: int) -> None:
        """Samples the positions of the slot's next token and its draft (``index`` and on)
        in turn, and keeps the drafted tokens up to the first that differs from the token
        sampled before it.

        Each token is sampled from the logits the model gave its position, with the slot's
        own chain, exactly as it would be had the tokens been decoded one by one: a greedy
        request's text is the same with and without drafting, and a seeded one's too. For a
        sampled request this is the accept/reject rule of speculative sampling with a draft
        that is certain of its token: the token is kept with probability p(token), and a
        refused one is replaced by a sample of p without it, so the text keeps the model's
        distribution."""
        draft, slot.draft = slot.draft, []
        base = len(slot.cached) - len(draft)  # the first drafted token's position
        accepted, refused = 0, False
        for j in range(len(draft) + 1):
            token = self._sample(slot, index + j)
            if token is None or j == len(draft):  # finished, or the whole draft was kept
                break
            if token != draft[j]:
                refused = True
                break
            accepted += 1
        if accepted < len(draft):  # the rest leaves the cache (the model can rewind)
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, base + accepted, -1)
            del slot.cached[base + accepted :]
        self._drafter.checked(slot.match, len(draft), accepted, refused=refused)

    def _sample(self, slot: Slot, index: int) -> int | None:
        """Samples the slot's next token from the logits of batch position ``index`` and
        sends what it shows; returns it, or None when the sequence finished."""
        request, sampler, stream = slot.request, slot.sampler, slot.stream
        assert request is not None
        assert sampler is not None
        assert stream is not None
        if stream.remaining <= 0:
            self._finish(slot, "length")
            return None
        if slot.picker is not None:
            token: int = slot.picker.pick(self._ctx, index)
        else:
            token = sampler.sample(self._ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return None
        piece = self._piece(token)
        top = request.params.logprobs
        logprob = None
        if top is not None:
            logits = self._ctx.get_logits_ith(index)
            logprob = token_logprob(logits, self._vocab_size, token, piece, top, self._piece)
        reason = stream.push(piece, logprob)
        if reason is not None:
            self._finish(slot, reason)
            return None
        slot.last_token = token
        if slot.lookup is not None:
            slot.lookup.append(token)
        return token

    def _finish(self, slot: Slot, reason: FinishReason) -> None:
        assert slot.stream is not None
        slot.stream.finish(reason)
        self._release(slot, keep_cache=True)

    def _release(self, slot: Slot, *, keep_cache: bool) -> None:
        if slot.picker is not None:
            slot.picker.close()
        if slot.sampler is not None:
            slot.sampler.close()
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.cached = []
        slot.lookup, slot.stream = None, None
        with self._lock:
            if slot.request is not None:
                self._busy_slots -= 1
            slot.sampler, slot.picker, slot.request = None, None, None
            self._lock.notify_all()  # close() may be waiting for the engine to go idle

    def _emit(self, request: Request, event: object) -> None:
        """Queues ``event``; a whole step's events are delivered in one wake-up."""
        self._outbox.append((request, event))

    def _piece(self, token: int) -> bytes:
        # Control tokens are written as nothing, except those a tool format writes its calls
        # with (Qwen's <tool_call>): without them a call could not be seen in the text.
        piece: bytes = self._model.detokenize([token], special=token in self._preserved)
        return piece


def _put_all(batch: list[tuple[Request, object]]) -> None:
    for request, event in batch:
        request.events.put_nowait(event)
