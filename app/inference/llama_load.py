"""Loading a GGUF into llama.cpp: the model and one context for all of an engine's sequences."""

from __future__ import annotations

import os
from pathlib import Path

import llama_cpp
from llama_cpp import _internals as internals

from app.errors import ModelUnavailable
from app.inference.engine import EngineConfig
from app.inference.llama_log import route_llama_log
from app.inference.model_files import check_gguf

BATCH = 512
"""Tokens decoded per step at most; prompt chunks fill what generating sequences leave."""

_KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_model(path: Path, *, vocab_only: bool = False) -> internals.LlamaModel:
    """The GGUF at ``path`` in llama.cpp (``vocab_only``: its metadata and vocabulary, not its
    weights); raises ``ModelUnavailable`` with a sentence naming the file if it cannot be."""
    check_gguf(path)
    llama_cpp.llama_backend_init()
    route_llama_log()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = vocab_only
    try:
        return internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError:
        raise ModelUnavailable(
            f"llama.cpp could not load the model file {path}; it may be truncated or of an "
            "unsupported architecture."
        ) from None


def load_model(
    path: Path, config: EngineConfig
) -> tuple[internals.LlamaModel, internals.LlamaContext]:
    """The model at ``path`` and a context of ``config.parallel`` sequences; raises
    ``ModelUnavailable`` with a sentence naming the file when llama.cpp cannot load it."""
    model = open_model(path)
    threads = config.threads or cpu_count()
    params = llama_cpp.llama_context_default_params()
    # Each sequence gets a whole context window of its own (see the scheduler).
    params.n_ctx = config.context_size * config.parallel
    params.n_seq_max = config.parallel
    params.kv_unified = False
    params.n_batch = BATCH
    params.n_ubatch = BATCH
    params.n_threads = threads
    params.n_threads_batch = threads
    params.type_k = params.type_v = _KV_TYPES[config.kv_cache_type]
    if config.kv_cache_type != "f16":
        # llama.cpp keeps a quantised V cache only with flash attention.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    try:
        context = internals.LlamaContext(model=model, params=params, verbose=False)
    except ValueError:
        model.close()
        if config.kv_cache_type != "f16":
            raise ModelUnavailable(
                f"llama.cpp could not create a context for {path} with a {config.kv_cache_type} "
                "KV cache (this model may not support a quantised cache or flash attention); "
                "set APP_KV_CACHE_TYPE=f16, or lower APP_PARALLEL or APP_CONTEXT_SIZE."
            ) from None
        raise ModelUnavailable(
            f"llama.cpp could not create a context for {path} ({config.parallel} x "
            f"{config.context_size} tokens); lower APP_PARALLEL or APP_CONTEXT_SIZE."
        ) from None
    return model, context
