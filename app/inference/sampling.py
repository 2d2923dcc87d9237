"""Picking tokens with llama.cpp: each generation's sampler chain, its grammar, and the log
probabilities reported with the tokens."""

from __future__ import annotations

import ctypes
import random
import re
from collections.abc import Callable, Collection, Sequence
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
    params: SamplingParams, *, vocab_size: int, end_tokens: Collection[int]
) -> internals.LlamaSampler:
    """A fresh sampler chain for one generation, in llama.cpp's usual order (without a grammar:
    see ``GrammarPicker``)."""
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


class GrammarPicker:
    """Picks tokens under a grammar the way llama.cpp's server does, which keeps grammars cheap.

    The chain picks a token from the model's own distribution and the grammar checks that one
    token; only when it refuses it does the grammar filter the whole vocabulary and the chain
    pick again. Checking every candidate at every step instead costs milliseconds a token, which
    would halve the speed of a batch of constrained sequences. Both ways pick from the same
    distribution: a refused token is never picked, and the rest keep their proportions.

    With an ``opening`` the grammar is lazy: the text is free until the opening is written, and
    the grammar holds what comes after it. A token that would write the opening and go on past
    it is refused (the rest is picked again), so the opening ends where a token ends and the
    grammar sees every character after it. (llama.cpp's own lazy grammars replay the token's
    remainder into the grammar, and abort the process when the grammar rejects it.)
    """

    OPENING_WINDOW = 256
    """Bytes of text kept to look for the opening in (openings are far shorter)."""

    def __init__(
        self,
        chain: internals.LlamaSampler,
        grammar: Any,
        vocab_size: int,
        *,
        opening: re.Pattern[bytes] | None = None,
        piece_of: Callable[[int], bytes] | None = None,
        free_bans: Collection[int] = (),
    ) -> None:
        """``free_bans``: tokens never picked while the text is free (``ignore_eos``'s end
        tokens: under the grammar, it decides where the text ends)."""
        self._chain = chain
        self._grammar = grammar
        self._vocab_size = vocab_size
        self._opening = opening
        self._piece_of = piece_of
        self._free_bans = list(free_bans)
        self._recent = b""  # the end of the free text, where the opening is looked for
        self._candidates = internals.LlamaTokenDataArray(n_vocab=vocab_size)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=self._one, size=1, selected=-1, sorted=False
        )

    @property
    def constraining(self) -> bool:
        """Whether the grammar holds the text now (always, unless waiting for the opening)."""
        return self._opening is None

    def pick(self, context: internals.LlamaContext, index: int) -> int:
        """The next token from the logits of batch position ``index``, accepted by both."""
        logits = np.ctypeslib.as_array(context.get_logits_ith(index), shape=(self._vocab_size,))
        if self._opening is not None:
            token = self._free(logits, self._opening)
        else:
            token = self._choose(logits, constrained=False)
            if not self._allowed(token):
                token = self._choose(logits, constrained=True)
            llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _free(self, logits: Any, opening: re.Pattern[bytes]) -> int:
        """A token of free text: any, but one that writes the opening ends with it."""
        assert self._piece_of is not None
        banned = list(self._free_bans)
        while True:
            token = self._choose(logits, constrained=False, banned=banned)
            recent = self._recent + self._piece_of(token)
            found = opening.search(recent)
            if found is None:
                self._recent = recent[-self.OPENING_WINDOW :]
                return token
            # Each pass refuses one more token; one that ends with the opening (its last
            # character alone, at worst) always remains.
            if found.end() == len(recent) or len(banned) >= self._vocab_size - 1:
                self._opening = None  # the grammar takes over from the next token
                return token
            banned.append(token)  # it writes the opening and goes on past it

    def _choose(self, logits: Any, *, constrained: bool, banned: Sequence[int] = ()) -> int:
        candidates = self._candidates
        candidates.copy_logits(logits)
        if banned:
            candidates.candidates_data.logit[banned] = float("-inf")
        array = ctypes.byref(candidates.candidates)
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, array)
        llama_cpp.llama_sampler_apply(self._chain.sampler, array)
        return int(candidates.candidates_data.id[candidates.candidates.selected])

    def _allowed(self, token: int) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0  # type: ignore[assignment]
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(self._one[0].logit != float("-inf"))

    def close(self) -> None:
        """Frees the grammar (the chain is its owner's)."""
        free_grammar(self._grammar)


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
