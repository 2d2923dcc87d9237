"""The first engine: one llama.cpp context, one generation at a time, on its own thread.

Every llama.cpp call that touches the context runs on a single worker thread, so the event loop
never blocks and concurrent requests simply queue. A prompt that shares a prefix with what the
context already holds reuses those positions of the KV cache instead of computing them again.
Each generation samples with its own llama.cpp sampler chain (bias, penalties, grammar, top-k,
top-p, min-p, temperature, seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jinja2
import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaSampler
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.errors import InvalidRequest, ModelUnavailable
from app.inference.engine import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)
from app.inference.text import StopMatcher, Utf8Stream

logger = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
# Repetition penalties look this many tokens back (llama.cpp's default).
_PENALTY_WINDOW = 64

# Chat formats for GGUFs that carry no template of their own.
FALLBACK_CHAT_TEMPLATES = {
    # TinyLlama-1.1B-Chat's format.
    "zephyr": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


class LlamaEngine:
    """``Engine`` over llama-cpp-python, serving one request at a time."""

    def __init__(
        self, llama: llama_cpp.Llama, executor: ThreadPoolExecutor, fallback_chat_format: str
    ) -> None:
        self._llama = llama
        self._executor = executor
        self._context_size = int(llama.n_ctx())
        self._vocab_size = int(llama.n_vocab())
        # llama-cpp-python exposes no public end-of-generation test or vocabulary handle; its
        # own completion code uses these the same way.
        self._model = llama._model
        self._vocab = llama._model.vocab
        self._chat = self._chat_formatter(fallback_chat_format)

    @classmethod
    async def load(
        cls,
        path: Path,
        *,
        context_size: int,
        threads: int | None = None,
        fallback_chat_format: str = "zephyr",
    ) -> LlamaEngine:
        """Loads the GGUF at ``path`` off the event loop.

        Raises ``ModelUnavailable`` with a sentence naming the file if it is not a loadable GGUF.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        loop = asyncio.get_running_loop()
        try:
            llama = await loop.run_in_executor(
                executor, _load_llama, path, context_size, threads or _cpu_count()
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(llama, executor, fallback_chat_format)

    def _chat_formatter(self, fallback: str) -> Jinja2ChatFormatter:
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            logger.info("the model has no chat template; using the %s format", fallback)
            template = FALLBACK_CHAT_TEMPLATES[fallback]
        eos, bos = self._model.token_eos(), self._model.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._model.token_get_text(bos) if bos != -1 else "",
        )

    @property
    def context_size(self) -> int:
        return self._context_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    # Tokenizing only reads the vocabulary, so it may run beside a generation.

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await asyncio.to_thread(self._tokenize, text, add_special)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        tokens: list[int] = self._llama.tokenize(
            text.encode("utf-8"), add_bos=add_special, special=True
        )
        return tokens

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return await asyncio.to_thread(self._detokenize, list(tokens))

    def _detokenize(self, tokens: list[int]) -> str:
        text: bytes = self._llama.detokenize(tokens)
        return text.decode("utf-8", errors="replace")

    async def tokenize_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        return await asyncio.to_thread(self._tokenize_chat, messages)

    def _tokenize_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        turns: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        try:
            prompt = self._chat(messages=turns).prompt
        except (jinja2.TemplateError, ValueError) as exc:
            raise InvalidRequest(
                f"The model's chat template refused these messages: {exc}", param="messages"
            ) from None
        # Templates that write the BOS token themselves must not get a second one.
        bos = self._chat.bos_token
        return self._tokenize(prompt, add_special=not (bos and prompt.startswith(bos)))

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(event: GenerationEvent | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        loop.run_in_executor(
            self._executor, self._run, list(prompt_tokens), params, emit, cancelled
        )
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            cancelled.set()

    def _run(
        self,
        prompt: list[int],
        params: SamplingParams,
        emit: Callable[[GenerationEvent | BaseException], None],
        cancelled: threading.Event,
    ) -> None:
        """Runs one generation on the worker thread, emitting events as it goes."""
        if cancelled.is_set():
            return
        try:
            sampler = self._sampler(params)
        except InvalidRequest as exc:
            emit(exc)
            return
        try:
            emit(self._generate(prompt, params, sampler, emit, cancelled))
        except Exception as exc:
            logger.exception("generation failed")
            emit(exc)
        finally:
            sampler.close()

    def _sampler(self, params: SamplingParams) -> LlamaSampler:
        """A fresh sampler chain for one generation, in llama.cpp's usual order."""
        sampler = LlamaSampler()
        if params.logit_bias:
            sampler.add_logit_bias(self._vocab_size, dict(params.logit_bias))
        if params.repeat_penalty != 1 or params.presence_penalty or params.frequency_penalty:
            sampler.add_penalties(
                self._vocab_size,
                _PENALTY_WINDOW,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        if params.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                self._vocab, params.grammar.encode(), b"root"
            )
            if not grammar:  # llama.cpp could not parse it; adding NULL would crash
                sampler.close()
                raise InvalidRequest(
                    "The requested output format could not be compiled into a grammar.",
                    param="response_format",
                )
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

    def _prefill(self, prompt: list[int]) -> None:
        """Brings the context to ``prompt``, keeping the longest prefix it already holds."""
        llama = self._llama
        # At least one prompt token is evaluated again, so fresh logits exist to sample from.
        limit = min(llama.n_tokens, len(prompt) - 1)
        held = np.asarray(llama.input_ids[:limit])
        differs = np.flatnonzero(held != np.asarray(prompt[:limit]))
        llama.n_tokens = int(differs[0]) if differs.size else limit
        llama.eval(prompt[llama.n_tokens :])

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        sampler: LlamaSampler,
        emit: Callable[[GenerationEvent | BaseException], None],
        cancelled: threading.Event,
    ) -> Finished:
        llama = self._llama
        max_tokens = min(params.max_tokens, self._context_size - len(prompt))
        utf8, stops = Utf8Stream(), StopMatcher(params.stop)
        reason: FinishReason = "length"
        generated, hit = 0, False
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not released yet
        if max_tokens > 0:
            self._prefill(prompt)
        while generated < max_tokens:
            if cancelled.is_set():
                reason = "stop"
                break
            token = sampler.sample(llama._ctx, -1)
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            generated += 1
            piece = llama.detokenize([token])
            if params.logprobs is not None:
                pending.append(self._logprob(token, piece, params.logprobs))
            text, hit = stops.feed(utf8.feed(piece))
            if hit:
                pending.clear()  # those tokens made the stop sequence, which is not returned
            if text:
                emit(TextDelta(text, tuple(pending)))
                pending.clear()
            if hit:
                reason = "stop"
                break
            if generated < max_tokens:
                llama.eval([token])
        if not hit:
            # Release what was held back: an unfinished character, a partial stop sequence.
            tail, hit = stops.feed(utf8.flush())
            tail = tail if hit else tail + stops.flush()
            if tail or pending:
                emit(TextDelta(tail, tuple(pending)))
        return Finished(reason=reason, prompt_tokens=len(prompt), completion_tokens=generated)

    def _logprob(self, token: int, piece: bytes, top: int) -> TokenLogprob:
        """The token's log probability under the model, from the logits it was sampled from."""
        pointer = self._llama._ctx.get_logits_ith(-1)
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
        piece: bytes = self._llama.detokenize([token])
        return TopLogprob(piece.decode("utf-8", errors="replace"), tuple(piece), logprob)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._llama.close)
        self._executor.shutdown(wait=True)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load_llama(path: Path, context_size: int, threads: int) -> llama_cpp.Llama:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelUnavailable(f"Cannot read the model file {path}: {exc.strerror}.") from None
    if magic != _GGUF_MAGIC:
        raise ModelUnavailable(
            f"The model file {path} is not a GGUF file; point APP_MODEL_PATH at a .gguf model."
        )
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=context_size,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except ValueError as exc:
        raise ModelUnavailable(
            f"llama.cpp could not load the model file {path}; it may be truncated or of an "
            "unsupported architecture."
        ) from exc
