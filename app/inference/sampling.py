"""Picking tokens with llama.cpp: each generation's sampler chain, its grammar, and the log
probabilities reported with the tokens."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from app.errors import InvalidRequest
from app.inference.engine import SamplingParams, TokenLogprob, TopLogprob

# Repetition penalties look this many tokens back (llama.cpp's default).
PENALTY_WINDOW = 64


def compile_grammar(vocab: Any, grammar: str) -> Any:
    """A grammar sampler for ``grammar`` (GBNF, root rule ``root``); raises ``InvalidRequest``
    when llama.cpp cannot parse it. Slow for large grammars: call it off the scheduler."""
    compiled = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not compiled:  # llama.cpp could not parse it; adding NULL to a chain would crash
        raise InvalidRequest(
            "The requested output format could not be compiled into a grammar.",
            param="response_format",
        )
    return compiled


def free_grammar(grammar: Any) -> None:
    """Frees a grammar sampler that no chain took over."""
    llama_cpp.llama_sampler_free(grammar)


def sampler_chain(
    params: SamplingParams,
    *,
    vocab_size: int,
    end_tokens: Collection[int],
    grammar: Any = None,
) -> internals.LlamaSampler:
    """A fresh sampler chain for one generation, in llama.cpp's usual order; it takes over
    ``grammar`` (from ``compile_grammar``)."""
    sampler = internals.LlamaSampler()
    bias = dict(params.logit_bias)
    if params.ignore_eos:
        bias.update((token, float("-inf")) for token in end_tokens)
    if bias:
        sampler.add_logit_bias(vocab_size, bias)
    if params.repeat_penalty != 1 or params.presence_penalty or params.frequency_penalty:
        sampler.add_penalties(
            vocab_size,
            PENALTY_WINDOW,
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


def token_logprob(
    logits_pointer: Any,
    vocab_size: int,
    token: int,
    piece: bytes,
    top: int,
    piece_of: Callable[[int], bytes],
) -> TokenLogprob:
    """The token's log probability under the model, from the logits it was sampled from, and
    the ``top`` likeliest alternatives."""
    logits = np.ctypeslib.as_array(logits_pointer, shape=(vocab_size,)).astype(np.float64)
    peak = logits.max()
    logprobs = logits - (peak + np.log(np.exp(logits - peak).sum()))
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(-logprobs, top)[:top]
        best = best[np.argsort(-logprobs[best])]
        alternatives = tuple(_top(piece_of(int(t)), float(logprobs[t])) for t in best)
    return TokenLogprob(
        token=piece.decode("utf-8", errors="replace"),
        bytes=tuple(piece),
        logprob=float(logprobs[token]),
        top=alternatives,
    )


def _top(piece: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(piece.decode("utf-8", errors="replace"), tuple(piece), logprob)
