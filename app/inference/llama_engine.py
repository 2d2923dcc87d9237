"""The first engine: one llama.cpp context, one generation at a time, on its own thread.

Every llama.cpp call that touches the context runs on a single worker thread, so the event loop
never blocks and concurrent requests simply queue. Requests whose prompts share a prefix with the
previous one reuse its KV cache (llama-cpp-python's ``generate`` does the prefix match).
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

import llama_cpp

from app.errors import ModelUnavailable
from app.inference.engine import (
    Finished,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TextDelta,
)
from app.inference.text import StopMatcher, Utf8Stream

logger = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"


class LlamaEngine:
    """``Engine`` over llama-cpp-python's ``Llama``, serving one request at a time."""

    def __init__(self, llama: llama_cpp.Llama, executor: ThreadPoolExecutor) -> None:
        self._llama = llama
        self._executor = executor
        self._context_size = int(llama.n_ctx())
        # llama-cpp-python exposes no public end-of-generation test; its own completion code
        # uses the vocabulary handle the same way.
        self._vocab = llama._model.vocab

    @classmethod
    async def load(
        cls, path: Path, *, context_size: int, threads: int | None = None
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
        return cls(llama, executor)

    @property
    def context_size(self) -> int:
        return self._context_size

    async def tokenize(self, text: str) -> list[int]:
        # Tokenizing only reads the vocabulary, so it may run beside a generation.
        return await asyncio.to_thread(self._tokenize, text)

    def _tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        return tokens

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
        try:
            if cancelled.is_set():
                return
            emit(self._generate(prompt, params, emit, cancelled))
        except Exception as exc:
            logger.exception("generation failed")
            emit(exc)

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        emit: Callable[[GenerationEvent | BaseException], None],
        cancelled: threading.Event,
    ) -> Finished:
        llama = self._llama
        room = self.context_size - len(prompt)
        max_tokens = min(params.max_tokens, room)
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        llama.set_seed(seed & 0xFFFFFFFF)
        utf8, stops = Utf8Stream(), StopMatcher(params.stop)
        reason: FinishReason = "length"
        generated = 0
        hit = False
        if max_tokens > 0:
            tokens = llama.generate(
                prompt,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                repeat_penalty=1.0,
            )
            for token in tokens:
                if cancelled.is_set() or llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                generated += 1
                text, hit = stops.feed(utf8.feed(llama.detokenize([token])))
                if text:
                    emit(TextDelta(text))
                if hit:
                    reason = "stop"
                    break
                if generated >= max_tokens:
                    break
        if not hit:
            # Release what was held back: an unfinished character, a partial stop sequence.
            tail, hit = stops.feed(utf8.flush())
            tail = tail if hit else tail + stops.flush()
            if tail:
                emit(TextDelta(tail))
        return Finished(reason=reason, prompt_tokens=len(prompt), completion_tokens=generated)

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
