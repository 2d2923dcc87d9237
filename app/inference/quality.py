"""What an engine configuration costs in quality and memory, measured on the real model: the mean
log-probability it gives a reference text, and the bytes of KV cache a token takes.

Used by ``scripts/bench --workload kv`` and the tests of ``APP_KV_CACHE_TYPE``; not by requests.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from app.inference.engine import EngineConfig
from app.inference.llama_load import load_model


@dataclass(frozen=True)
class Measured:
    mean_logprob: float
    """Mean natural-log probability of each reference token after the ones before it."""
    kv_bytes_per_token: float
    """KV cache bytes one token takes in a sequence (the sequence's state over its length)."""
    tokens: int


def measure(path: Path, config: EngineConfig, text: str) -> Measured:
    """Decodes ``text`` in one sequence of a context made as the service makes it."""
    model, context = load_model(path, config)
    try:
        tokens = model.tokenize(text.encode(), add_bos=True, special=False)
        tokens = tokens[: min(config.context_size, 512) - 1]
        batch = internals.LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch(tokens, n_past=0, logits_all=True)
            context.decode(batch)
        finally:
            batch.close()
        pointer = ctypes.cast(
            llama_cpp.llama_get_logits(context.ctx), ctypes.POINTER(ctypes.c_float)
        )
        logits = np.ctypeslib.as_array(pointer, shape=(len(tokens), model.n_vocab()))
        rows = logits[:-1].astype(np.float64)
        top = rows.max(axis=1, keepdims=True)
        norms = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        picked = rows[np.arange(len(tokens) - 1), tokens[1:]]
        state = llama_cpp.llama_state_seq_get_size(context.ctx, 0)
        mean = float((picked - norms).mean())
        return Measured(mean, state / len(tokens), len(tokens))
    finally:
        context.close()
        model.close()
