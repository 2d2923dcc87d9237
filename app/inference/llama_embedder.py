"""An embedding model on llama.cpp: inputs pooled into one vector each, many per decode.

One worker thread owns the context. Requests queue their inputs; the worker packs the waiting
inputs of every request into batches (as many sequences as fit ``n_ubatch`` tokens and
``n_seq_max`` sequences), encodes each batch once and reads each sequence's pooled vector, so a
request of 256 passages and several small requests share decodes. Each vector is L2-normalised,
as sentence-transformers and OpenAI return them.

llama.cpp aborts the whole process (not an exception) on a batch longer than ``n_ubatch``, on a
sequence longer than the model's trained context, and on ``n_ubatch`` not a multiple of
``n_seq_max`` with mean pooling: the sizes below are chosen so that none can happen, and inputs
longer than ``max_input_tokens`` are refused before they get here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from app.errors import EngineStopping, InvalidRequest, ModelUnavailable
from app.inference.engine import EngineConfig, EngineStats
from app.inference.llama_load import cpu_count, open_model

logger = logging.getLogger(__name__)

MAX_CONTEXT = 8192
"""Tokens one input may have at most, whatever the model was trained for (memory)."""
MAX_SEQUENCES = 64
"""Inputs encoded together in one decode at most."""


@dataclass
class _Job:
    """One request's inputs and, as they are made, their vectors."""

    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[list[np.ndarray]]
    vectors: list[np.ndarray | None] = field(default_factory=list)
    next: int = 0  # the first input not yet in a batch
    left: int = 0  # inputs whose vectors are not yet made
    cancelled: bool = False


class LlamaEmbedder:
    """Embeds token sequences with a pooling model (BERT-class encoders, or a decoder whose
    GGUF says how to pool)."""

    kind: Literal["embedding"] = "embedding"

    def __init__(self, model: internals.LlamaModel, context: internals.LlamaContext) -> None:
        self._model = model
        self._context = context
        self._vocab = llama_cpp.llama_model_get_vocab(model.model)
        self._vocab_size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        # Pooled vectors have n_embd_out floats (n_embd for most models).
        self.dimensions = int(llama_cpp.llama_model_n_embd_out(model.model))
        self._batch_tokens = int(llama_cpp.llama_n_ubatch(context.ctx))
        self._sequences = int(llama_cpp.llama_n_seq_max(context.ctx))
        self.max_input_tokens = self._batch_tokens
        self._encoder = bool(llama_cpp.llama_model_has_encoder(model.model))
        self._batch = llama_cpp.llama_batch_init(self._batch_tokens, 0, 1)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: list[_Job] = []
        self._busy = False
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="embedder", daemon=True)
        self._worker.start()

    @classmethod
    async def load(cls, path: Path, config: EngineConfig) -> LlamaEmbedder:
        """Loads the GGUF at ``path`` off the event loop (``ModelUnavailable`` if it cannot)."""
        model, context = await asyncio.to_thread(load_embedding_model, path, config)
        return cls(model, context)

    @property
    def context_size(self) -> int:
        return self.max_input_tokens

    @property
    def vocab_size(self) -> int:
        return int(self._vocab_size)

    async def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return await asyncio.to_thread(self._tokenize, text, add_special)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        size = len(data) + 8
        while True:
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buffer, size, add_special, False
            )
            if count >= 0:
                return list(buffer[:count])
            size = -count

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One L2-normalised vector per input, in order."""
        if self._stopping or not self._worker.is_alive():
            raise EngineStopping()
        for index, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequest("An input is empty.", param=f"input[{index}]")
            if len(tokens) > self.max_input_tokens:
                raise InvalidRequest(
                    f"Input {index} is {len(tokens)} tokens; this model embeds at most "
                    f"{self.max_input_tokens}.",
                    param=f"input[{index}]",
                )
            if min(tokens) < 0 or max(tokens) >= self._vocab_size:
                raise InvalidRequest(
                    f"Input {index} has a token id outside the model's vocabulary (0 to "
                    f"{self._vocab_size - 1}).",
                    param=f"input[{index}]",
                )
        loop = asyncio.get_running_loop()
        job = _Job([list(t) for t in inputs], loop, loop.create_future())
        job.vectors = [None] * len(inputs)
        job.left = len(inputs)
        self._jobs.put(job)
        try:
            return await job.done
        except asyncio.CancelledError:
            job.cancelled = True  # its inputs not yet encoded are skipped
            raise

    def stats(self) -> EngineStats:
        waiting = self._jobs.qsize() + len(self._waiting)
        return EngineStats(slots=1, busy=int(self._busy), waiting=waiting)

    def stop_admitting(self) -> None:
        self._stopping = True

    async def close(self, grace: float = 0.0) -> None:
        """Stops admitting; what waits is refused; the batch being encoded (if any) ends
        first, so the context is never freed under it."""
        self._stopping = True
        self._jobs.put(None)
        await asyncio.to_thread(self._worker.join)
        llama_cpp.llama_batch_free(self._batch)
        self._context.close()
        self._model.close()

    # --- the worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._waiting:
                job = self._jobs.get()
                if job is None:
                    return
                self._waiting.append(job)
            while True:  # everything queued meanwhile shares the next batches
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._fail_waiting(EngineStopping())
                    return
                self._waiting.append(job)
            self._waiting = [j for j in self._waiting if not j.cancelled]
            if not self._waiting:
                continue
            self._busy = True
            try:
                self._encode_one_batch()
            except Exception as exc:
                logger.exception("an embedding batch failed")
                self._fail_waiting(exc)
            finally:
                self._busy = False

    def _encode_one_batch(self) -> None:
        """Encodes the next inputs of the waiting jobs (oldest first) that fit one batch."""
        batch = self._batch
        members: list[tuple[_Job, int]] = []
        used = 0
        for job in self._waiting:
            while job.next < len(job.inputs) and len(members) < self._sequences:
                tokens = job.inputs[job.next]
                if used + len(tokens) > self._batch_tokens:
                    break
                seq = len(members)
                for pos, token in enumerate(tokens):
                    k = used + pos
                    batch.token[k] = token
                    batch.pos[k] = pos
                    batch.n_seq_id[k] = 1
                    batch.seq_id[k][0] = seq
                    batch.logits[k] = 1
                used += len(tokens)
                members.append((job, job.next))
                job.next += 1
            if len(members) >= self._sequences or (
                job.next < len(job.inputs) and used + len(job.inputs[job.next]) > self._batch_tokens
            ):
                break
        batch.n_tokens = used
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._context.ctx), True)
        run = llama_cpp.llama_encode if self._encoder else llama_cpp.llama_decode
        status = run(self._context.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp failed to embed a batch (status {status})")
        for seq, (job, index) in enumerate(members):
            pointer = llama_cpp.llama_get_embeddings_seq(self._context.ctx, seq)
            vector = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.dimensions,)
            ).astype(np.float32)
            norm = float(np.linalg.norm(vector))
            job.vectors[index] = vector / norm if norm > 0 else vector
            job.left -= 1
        finished = [job for job in self._waiting if job.left == 0]
        self._waiting = [job for job in self._waiting if job.left > 0]
        for job in finished:
            vectors = [v for v in job.vectors if v is not None]
            _answer(job, _resolve, vectors)

    def _fail_waiting(self, exc: BaseException) -> None:
        for job in self._waiting:
            _answer(job, _reject, exc)
        self._waiting = []


def _answer(job: _Job, call: Any, value: object) -> None:
    """Hands a result to the job's event loop (gone already if the app is shutting down)."""
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(call, job.done, value)


def _resolve(future: asyncio.Future[list[np.ndarray]], vectors: list[np.ndarray]) -> None:
    if not future.done():
        future.set_result(vectors)


def _reject(future: asyncio.Future[list[np.ndarray]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def load_embedding_model(
    path: Path, config: EngineConfig
) -> tuple[internals.LlamaModel, internals.LlamaContext]:
    """The model at ``path`` and a context that pools: every input in one micro-batch, no
    longer than the model was trained for, a number of sequences that divides the batch."""
    model = open_model(path)
    trained = llama_cpp.llama_model_n_ctx_train(model.model)
    size = min(trained if trained > 0 else 512, MAX_CONTEXT, max(config.context_size, 512))
    sequences = MAX_SEQUENCES
    while size % sequences:  # mean pooling needs n_ubatch to be a multiple of n_seq_max
        sequences //= 2
    threads = config.threads or cpu_count()
    params = llama_cpp.llama_context_default_params()
    params.embeddings = True
    params.n_ctx = size
    params.n_batch = size
    params.n_ubatch = size
    params.n_seq_max = sequences
    params.kv_unified = True
    params.n_threads = threads
    params.n_threads_batch = threads
    try:
        context = internals.LlamaContext(model=model, params=params, verbose=False)
    except ValueError:
        model.close()
        raise ModelUnavailable(
            f"llama.cpp could not create an embedding context for {path}."
        ) from None
    pooling = llama_cpp.llama_pooling_type(context.ctx)
    if pooling in (llama_cpp.LLAMA_POOLING_TYPE_NONE, llama_cpp.LLAMA_POOLING_TYPE_RANK):
        context.close()
        model.close()
        what = "is a reranker (rank pooling)" if pooling else "does not say how to pool"
        raise ModelUnavailable(f"{path} {what}; /v1/embeddings needs an embedding model.")
    return model, context


def is_embedding_model(path: Path) -> bool:
    """Whether the GGUF at ``path`` is an embedding model, from its metadata alone (the
    vocabulary is loaded, not the weights)."""
    try:
        model = open_model(path, vocab_only=True)
    except ModelUnavailable:
        return False  # the full load says what is wrong with it
    try:
        return pools(model)
    finally:
        model.close()


def pools(model: internals.LlamaModel) -> bool:
    """Whether the GGUF is an embedding model: it names a pooling type, or it is an encoder."""
    architecture = _meta(model, "general.architecture") or ""
    pooling = _meta(model, f"{architecture}.pooling_type")
    if pooling is not None:
        return pooling.strip() not in ("0", "")
    return bool(llama_cpp.llama_model_has_encoder(model.model)) or architecture in (
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "jina-bert-v2",
        "neo-bert",
        "modern-bert",
    )


def _meta(model: internals.LlamaModel, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_model_meta_val_str(model.model, key.encode(), buffer, len(buffer))
    if size < 0:
        return None
    return buffer.value.decode("utf-8", errors="replace")
