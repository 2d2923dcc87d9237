"""Prompt lookup: drafting a sequence's next tokens from what it already holds.

Answers grounded in their input (summaries, extractions, code edits, RAG answers that quote the
context) repeat long spans of it. When the last few tokens of a sequence also occur earlier in
its prompt or output, the tokens that followed them there are a good guess at what comes next.
The scheduler decodes such a draft in the same batch as the sequence's next token and keeps the
drafted tokens the model would have picked anyway (see ``Scheduler._verify``): one decode of
``k + 1`` tokens on a CPU costs far less than ``k + 1`` decodes of one, so every accepted token
is time won, and a rejected one costs a little compute.

How long a draft to send is a bet, made per step across the batch (``plan``): the ``j``-th
token of a sequence's draft pays off with probability ``rate ** j``, the recent acceptance rate
of drafts from matches as long as its own (``Acceptance``), and a step takes what steps like it
took here lately (``StepCosts``: on a CPU that is far from linear; a step of two tokens can cost
twice one, even sizes less than odd ones, and a draft beside other sequences costs a pass of its
own). The drafts sent are the ones that make the expected tokens per second of the step the
highest. A lone stream whose drafts keep being accepted drafts long; a full batch, or a sequence
whose drafts keep failing, drafts little or nothing, so drafting costs little where it does not
help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

NGRAMS = (4, 3, 2)
"""The suffix lengths looked up, longest first: a longer match is a better guess."""

PRIOR_RATE = 0.7
"""The acceptance rate assumed, in a step of several sequences, for drafts of a kind not yet
checked. Measured on 2026-11-27: an optimistic first guess (0.92) everywhere cost the stream
workload at C=8, after the lower levels, 0.82-0.89 of llama-server against 0.96-1.06: a few
sequences drafting long made the steps that new requests wait behind long."""

LONE_PRIOR_RATE = 0.85
"""The same, for a sequence decoding alone. With Qwen2.5-0.5B Q4_K_M, whose multi-token decodes
cost much more than one on a CPU with a fast one-token path (two tokens 2.3 times one), the
cautious prior never pays for a draft, so none is sent and nothing is learnt (1.00x on the
grounded workload, 1.3x with an optimistic one); a lone sequence holds up no batch, so there the
first guess is optimistic."""

MEMORY = 0.9
"""How much of the acceptance statistics each verification keeps (the rest is the new one)."""

RELAX = 0.02
"""How far a kind's statistics move back towards the prior each time one of its drafts is not
sent: a rate that fell low is tried again now and then, instead of never."""

LONGEST_MATCH = 16
"""Matches longer than this count as this long."""


@dataclass
class PromptLookup:
    """The n-grams of one sequence's committed tokens (its prompt, then what it generated),
    with where each last ended."""

    limit: int
    """The longest draft to propose."""
    tokens: list[int] = field(default_factory=list)
    _ends: dict[tuple[int, ...], int] = field(default_factory=dict)
    _indexed: int = 0  # tokens[:_indexed] have their n-grams in _ends

    @classmethod
    def of(cls, prompt: Sequence[int], limit: int) -> PromptLookup:
        return cls(limit=limit, tokens=list(prompt))

    def append(self, token: int) -> None:
        """``token`` is the sequence's next (the model picked it)."""
        self.tokens.append(token)

    def propose(self, room: int) -> tuple[list[int], int]:
        """Up to ``min(room, limit)`` tokens that followed the latest earlier occurrence of the
        sequence's longest matching suffix, and how long the match is (``LONGEST_MATCH`` at
        most): a long one means the sequence is copying. No tokens when no suffix occurred
        before."""
        room = min(room, self.limit)
        tokens = self.tokens
        if room <= 0 or len(tokens) < 2:
            return [], 0
        self._index(len(tokens) - 1)  # every n-gram that has a token after it
        for n in NGRAMS:
            if len(tokens) <= n:
                continue
            end = self._ends.get(tuple(tokens[-n:]))
            if end is not None:
                match = n
                while (
                    match < LONGEST_MATCH
                    and end - match > 0
                    and tokens[end - match - 1] == tokens[-match - 1]
                ):
                    match += 1
                return continued_from(tokens, end, room), match
        return [], 0

    def _index(self, upto: int) -> None:
        """Indexes the n-grams ending before ``tokens[upto]`` (so each has a continuation)."""
        tokens, ends = self.tokens, self._ends
        for stop in range(self._indexed + 1, upto + 1):  # the n-gram tokens[stop - n : stop]
            for n in NGRAMS:
                if stop >= n:
                    ends[tuple(tokens[stop - n : stop])] = stop
        self._indexed = max(self._indexed, upto)


def continued_from(tokens: list[int], end: int, room: int) -> list[int]:
    """``room`` tokens that follow ``tokens[:end]``'s ending as it went on there: when that
    runs into the sequence's own end, the draft goes on as if the sequence repeated itself
    with a period of ``len(tokens) - end`` tokens (a list, a refrain, a model caught in a loop)
    rather than stopping short."""
    draft = tokens[end : end + room]
    period = len(tokens) - end
    while len(draft) < room:
        draft.append(draft[len(draft) - period])
    return draft


class Acceptance:
    """How often drafted tokens were accepted, by the length of the match they came from,
    over the engine's recent drafts: the chance that a drafted token is accepted, given that
    the ones before it were. Until drafts of a kind were checked, that is a prior (a first
    guess, given by the caller), which weighs less with every check and more with every draft
    of the kind not sent."""

    def __init__(self) -> None:
        self._accepted = [0.0] * (LONGEST_MATCH + 1)
        self._tried = [0.0] * (LONGEST_MATCH + 1)
        self._prior = [1.0] * (LONGEST_MATCH + 1)  # the prior's weight, in tokens tried

    def rate(self, match: int, prior: float) -> float:
        weight = self._prior[match]
        return (self._accepted[match] + prior * weight) / (self._tried[match] + weight)

    def checked(self, match: int, accepted: int, *, refused: bool) -> None:
        """``accepted`` tokens of a draft from a match this long were kept, and then one was
        ``refused`` (or not: the draft was kept whole, or the text ended within it)."""
        self._accepted[match] = MEMORY * self._accepted[match] + accepted
        self._tried[match] = MEMORY * self._tried[match] + accepted + refused
        self._prior[match] *= MEMORY

    def skipped(self, match: int) -> None:
        """A draft from a match this long was not sent: the rate moves ``RELAX`` of the way
        back to the prior (the prior takes that share of the statistics' weight, which stays
        what it was, so a draft sent again after many skips learns from a refusal as fast)."""
        tried = self._tried[match]
        self._accepted[match] *= 1 - RELAX
        self._tried[match] *= 1 - RELAX
        self._prior[match] += RELAX * tried


class Drafter:
    """An engine's drafting: a lookup per sequence, the acceptance statistics and step costs
    its plans come from, and how many tokens were drafted and kept. The scheduler decodes the
    drafts and checks them."""

    def __init__(self, limit: int) -> None:
        """``limit``: the longest draft (``APP_DRAFT_TOKENS``); 0: no drafting."""
        self._limit = limit
        self.costs = StepCosts()
        self._acceptance = Acceptance()
        self.counts = (0, 0)
        """Tokens drafted and tokens kept, since the engine started (one tuple: read by other
        threads)."""

    def lookup(self, prompt: Sequence[int]) -> PromptLookup | None:
        """A new sequence's lookup; None when drafting is off."""
        return PromptLookup.of(prompt, self._limit) if self._limit else None

    def drafts(
        self, sequences: Sequence[tuple[PromptLookup | None, int]], *, room: int
    ) -> list[tuple[list[int], int]]:
        """This step's draft of each generating sequence, given its lookup and how many tokens
        it may still write, with the length of the match it came from (``[], 0``: none);
        ``room`` drafted tokens at most in all."""
        found: list[tuple[int, list[int], int]] = []
        for i, (lookup, left) in enumerate(sequences):
            if lookup is not None:
                tokens, match = lookup.propose(left)
                if tokens:
                    found.append((i, tokens, match))
        drafts: list[tuple[list[int], int]] = [([], 0) for _ in sequences]
        if not found:
            return drafts
        prior = LONE_PRIOR_RATE if len(sequences) == 1 else PRIOR_RATE
        rates = [(tokens, self._acceptance.rate(match, prior)) for _, tokens, match in found]
        taken = plan(len(sequences), rates, self.costs, room=room)
        for (i, tokens, match), count in zip(found, taken, strict=True):
            if count:
                drafts[i] = (tokens[:count], match)
            else:
                self._acceptance.skipped(match)
        return drafts

    def checked(self, match: int, drafted: int, accepted: int, *, refused: bool) -> None:
        """A draft of ``drafted`` tokens from a match this long was checked: ``accepted`` kept,
        then one ``refused`` (or not: kept whole, or the text ended within it)."""
        self._acceptance.checked(match, accepted, refused=refused)
        total, kept = self.counts
        self.counts = (total + drafted, kept + accepted)


class StepCosts:
    """How long a decode step takes on this machine with this model, by the sequences in it
    and its tokens (each with its logits), learned from the steps that ran (a moving average
    per kind of step).

    llama.cpp decodes, in one pass, the same number of tokens of each sequence: a step in
    which one sequence checks a draft of ``k`` tokens beside others that decode one is two
    passes, the second as costly as a lone sequence's step of ``k`` tokens. A kind of step
    not yet seen is guessed that way; a lone step of a size not yet seen, from the nearest
    seen one, scaled as ``0.5 + 0.4 n`` (about what was measured on two x86 machines for two
    models). Once a step of that kind ran, its measure counts."""

    WEIGHT = 0.1
    """The weight of each new measure in the average."""
    FORGET = 256
    """Measures are forgotten after this many steps (a few seconds), so that a slow step (a
    neighbour's burst, a collection) does not rule out a kind of step for long: the kinds in
    use are measured again within a few steps."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[int, int], float] = {}
        self._steps = 0

    def observe(self, sequences: int, tokens: int, seconds: float) -> None:
        self._steps += 1
        if self._steps % self.FORGET == 0:
            self._seconds.clear()
        known = self._seconds.get((sequences, tokens))
        self._seconds[(sequences, tokens)] = (
            seconds if known is None else known + self.WEIGHT * (seconds - known)
        )

    def estimate(self, sequences: int, tokens: int) -> float:
        """The seconds of a step of ``tokens`` tokens over ``sequences`` sequences."""
        known = self._seconds.get((sequences, tokens))
        if known is not None:
            return known
        if sequences == 1:
            return self._lone(tokens)
        base = self._seconds.get((sequences, sequences))
        if base is None:
            base = self._lone(sequences)  # one pass of one token a sequence
        return base + (self._lone(tokens - sequences) if tokens > sequences else 0.0)

    def _lone(self, tokens: int) -> float:
        """A lone sequence's step of ``tokens`` tokens: measured, or scaled from the nearest
        lone step measured (else from any step of one token a sequence)."""
        known = self._seconds.get((1, tokens))
        if known is not None:
            return known
        lone = [size for sequences, size in self._seconds if sequences == 1]
        plain = [size for sequences, size in self._seconds if sequences == size]
        for sizes, kind in ((lone, 1), (plain, 0)):
            if sizes:
                size = min(sizes, key=lambda size: (abs(size - tokens), size))
                measured = self._seconds[(kind or size, size)]
                return measured * _scale(tokens) / _scale(size)
        return _scale(tokens)


def _scale(tokens: int) -> float:
    return 0.5 + 0.4 * tokens


def plan(
    generating: int,
    drafts: Sequence[tuple[list[int], float]],
    costs: StepCosts,
    *,
    room: int,
) -> list[int]:
    """How many tokens of each draft to decode this step, ``room`` at most in all.

    ``generating``: the sequences decoding their next token; ``drafts``: each drafting
    sequence's proposed tokens and acceptance rate. Drafted tokens are taken the likeliest
    first (a draft's ``j``-th token is kept with probability ``rate ** j``), as many as make
    the step's expected tokens per second the highest."""
    if not drafts:
        return []
    gains = sorted(
        (
            (rate**j, i)
            for i, (tokens, rate) in enumerate(drafts)
            for j in range(1, len(tokens) + 1)
        ),
        reverse=True,
    )[: max(room, 0)]
    produced = float(generating)
    best, best_value = 0, produced / costs.estimate(generating, generating)
    for m, (gain, _) in enumerate(gains, start=1):
        produced += gain
        value = produced / costs.estimate(generating, generating + m)
        if value > best_value:
            best, best_value = m, value
    taken = [0] * len(drafts)
    for _, i in gains[:best]:
        taken[i] += 1
    return taken
