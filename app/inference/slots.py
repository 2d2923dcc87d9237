"""The sequence slots of a llama.cpp context, and where a request's sequence goes.

A new request goes to the free slot whose cache shares the longest prefix with its prompt (only
the rest is computed); on a tie, to one that keeps the running sequences on consecutive ids, then
to the one with the least cached, so that an unrelated prompt does not evict a cache a later one
could reuse. Running sequences are kept on consecutive ids, which llama.cpp decodes in one pass
(see the scheduler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from app.inference.drafting import PromptLookup
from app.inference.text import TokenStream


@dataclass
class Slot:
    """A sequence of the context: the tokens its KV cache holds, and what it is generating."""

    seq: int
    cached: list[int] = field(default_factory=list)
    request: Any = None  # the scheduler's Request, while it runs here
    sampler: internals.LlamaSampler | None = None
    picker: Any = None  # a GrammarPicker, when the request has a grammar
    prefilled: int = 0
    stream: TokenStream | None = None  # the events of the request's tokens
    last_token: int = -1
    lookup: PromptLookup | None = None  # the request's tokens, for drafts (None: no drafting)
    draft: list[int] = field(default_factory=list)  # the tokens drafted in this step
    match: int = 0  # the length of the match the draft came from


def best_slot(free: list[Slot], taken: set[int], prompt: Sequence[int]) -> Slot:
    """The free slot a request with ``prompt`` should take (``taken``: the busy slots' ids)."""
    return max(
        free,
        key=lambda s: (
            common_prefix(s.cached, prompt),
            _consecutive(taken | {s.seq}),
            -len(s.cached),
        ),
    )


def keep_consecutive(slots: list[Slot], memory: Any) -> bool:
    """Moves running sequences so that their ids are consecutive; whether any moved.

    The window of ids that already holds the most running sequences is kept (on a tie, the
    one whose idle slots cache the least); each running sequence outside it moves into one of
    the window's idle slots, whose cache is given up. The slot objects swap sequence ids, so
    the request, sampler and cached tokens travel with the sequence."""
    running = [slot for slot in slots if slot.request is not None]
    if not running or _consecutive({slot.seq for slot in running}):
        return False
    width = len(running)

    def score(start: int) -> tuple[int, int]:
        window = slots[start : start + width]
        idle = [slot for slot in window if slot.request is None]
        return width - len(idle), -sum(len(slot.cached) for slot in idle)

    start = max(range(len(slots) - width + 1), key=score)
    window = slots[start : start + width]
    holes = [slot for slot in window if slot.request is None]
    strays = [slot for slot in running if slot not in window]
    for stray, hole in zip(strays, holes, strict=True):
        # A whole-stream copy, made by llama.cpp before the next decode; then the stray's
        # old stream is emptied and becomes the idle slot's.
        llama_cpp.llama_memory_seq_cp(memory, stray.seq, hole.seq, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, stray.seq, -1, -1)
        stray.seq, hole.seq = hole.seq, stray.seq
        hole.cached = []
    return True


def _consecutive(seqs: set[int]) -> bool:
    """Whether the sequence ids form one run (llama.cpp then batches them in one pass)."""
    return not seqs or max(seqs) - min(seqs) + 1 == len(seqs)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    limit = min(len(a), len(b))
    if not limit:
        return 0
    differs = np.flatnonzero(np.asarray(a[:limit]) != np.asarray(b[:limit]))
    return int(differs[0]) if differs.size else limit
