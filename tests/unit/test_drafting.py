"""Prompt lookup drafting: what a sequence proposes from its own tokens, and how much of it a
step sends (``drafting.plan``), with step costs given rather than measured."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import llama_cpp
import pytest

from app.inference import drafting, llama_engine
from app.inference.drafting import (
    LONGEST_MATCH,
    Acceptance,
    Drafter,
    PromptLookup,
    StepCosts,
    plan,
)


def costs(sequences: int, per_size: dict[int, float]) -> StepCosts:
    measured = StepCosts()
    for size, seconds in per_size.items():
        measured.observe(sequences, size, seconds)
    return measured


# Measured on a 2-core machine with SmolLM2-135M (ms per step of n tokens with logits).
LONE = {1: 7.7, 2: 16.6, 3: 19.7, 4: 20.1, 5: 25.0, 6: 24.7, 7: 28.8, 8: 28.1, 9: 33.1}
CPU = costs(1, LONE)
CPU_BATCH = costs(8, {8: 29.4})


def test_a_repeated_span_proposes_what_followed_it() -> None:
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    lookup = PromptLookup.of([*text, 20, 21, 1, 2, 3], limit=4)
    tokens, match = lookup.propose(room=10)
    assert tokens == [4, 5, 6, 7]
    assert match == 3  # 1 2 3 matched; 21 differs from what came before the earlier 1
    assert lookup.propose(room=2)[0] == [4, 5]


def test_the_latest_occurrence_and_the_longest_suffix_win() -> None:
    lookup = PromptLookup.of([7, 8, 1, 9, 5, 8, 1, 9, 6, 3, 8, 1, 9], limit=3)
    tokens, match = lookup.propose(room=3)
    assert tokens == [6, 3, 8]  # after the later "8 1 9"
    assert match == 3


def test_no_draft_without_an_earlier_occurrence() -> None:
    lookup = PromptLookup.of([1, 2, 3, 4], limit=8)
    assert lookup.propose(room=8) == ([], 0)
    lookup.append(2)  # "4 2" never occurred before; a single token is no match
    assert lookup.propose(room=8) == ([], 0)
    lookup.append(3)  # "2 3" did: what followed it, and on as it repeats
    assert lookup.propose(room=8) == ([4, 2, 3, 4, 2, 3, 4, 2], 2)
    assert PromptLookup.of([1, 2, 1, 2], limit=0).propose(room=8) == ([], 0)


def test_generated_tokens_are_indexed_as_they_come() -> None:
    lookup = PromptLookup.of([5, 6], limit=8)
    for token in (7, 8, 9, 5, 6, 7):
        lookup.append(token)
    assert lookup.propose(room=5)[0] == [8, 9, 5, 6, 7]  # further on, it repeats (below)


def test_a_sequence_repeating_itself_drafts_the_repetition_past_its_end() -> None:
    # A model caught in a loop ("Tom, Joe, Tom, Joe, ..."): the latest earlier occurrence of
    # the suffix is one period back, so what followed it runs into the sequence's own end.
    lookup = PromptLookup.of([1, 9, 7, 4, 9, 7, 4, 9, 7], limit=8)
    tokens, match = lookup.propose(room=8)
    assert tokens == [4, 9, 7, 4, 9, 7, 4, 9]
    assert match == 5
    assert lookup.propose(room=2)[0] == [4, 9]
    assert PromptLookup.of([3, 5, 5, 5], limit=4).propose(room=8)[0] == [5, 5, 5, 5]


def test_a_long_match_counts_as_copying_up_to_a_limit() -> None:
    span = list(range(100, 140))
    lookup = PromptLookup.of([*span, 1, *span[:30]], limit=8)
    tokens, match = lookup.propose(room=8)
    assert tokens == span[30:38]
    assert match == LONGEST_MATCH


def test_acceptance_learns_per_match_length_and_recovers() -> None:
    acceptance = Acceptance()
    assert acceptance.rate(2, 0.7) == 0.7  # nothing checked yet: the prior
    for _ in range(20):
        acceptance.checked(16, 8, refused=False)
        acceptance.checked(2, 0, refused=True)
        acceptance.checked(3, 2, refused=False)  # the text ended within the draft
    for prior in (0.7, 0.9):  # once checked, the prior hardly counts
        assert acceptance.rate(16, prior) > 0.95
        assert acceptance.rate(2, prior) < 0.1
        assert acceptance.rate(3, prior) > 0.95
    low = acceptance.rate(2, 0.7)
    acceptance.skipped(2)
    assert acceptance.rate(2, 0.7) == pytest.approx(low + 0.02 * (0.7 - low))  # RELAX of the way
    for _ in range(100):
        acceptance.skipped(2)  # never sent again: it drifts back towards trying
    assert acceptance.rate(2, 0.7) > low + 0.3
    assert acceptance.rate(2, 0.9) > acceptance.rate(2, 0.7)
    relaxed = acceptance.rate(2, 0.7)
    acceptance.checked(2, 0, refused=True)  # and learns again as soon as it is checked
    assert acceptance.rate(2, 0.7) < relaxed


def test_a_kind_long_not_sent_learns_from_refusals_as_fast_as_before() -> None:
    acceptance = Acceptance()
    for _ in range(20):
        acceptance.checked(2, 0, refused=True)
    for _ in range(250):
        acceptance.skipped(2)
    assert acceptance.rate(2, 0.85) > 0.8  # back near the prior: worth a try again
    for _ in range(10):
        acceptance.checked(2, 0, refused=True)
    assert acceptance.rate(2, 0.85) < 0.35  # ten refusals are as telling as they were


def test_a_lone_sequence_starts_from_an_optimistic_guess_a_batch_from_a_cautious_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Costs as on a CPU where two tokens cost 2.3 times one and four 2.9 times (a K-quant with
    # a fast one-token path): only an optimistic first guess ever tries a draft, and a lone
    # sequence holds up no batch with it.
    costs = StepCosts()
    for size, ms in {1: 18.4, 2: 43.2, 3: 59.0, 4: 52.7, 5: 70.2}.items():
        costs.observe(1, size, ms / 1000)
    # Two sequences: a step of 5 tokens pays at a rate of 0.85, not at 0.7.
    costs.observe(2, 2, 0.030)
    costs.observe(2, 5, 0.060)

    def drafts(sequences: int) -> list[list[int]]:
        drafter = Drafter(limit=4)
        drafter.costs = costs
        lookups = [PromptLookup.of([*range(10, 30), *range(10, 20)], limit=4)] * sequences
        return [draft for draft, _ in drafter.drafts([(x, 100) for x in lookups], room=64)]

    assert drafts(1) == [[20, 21, 22]]
    assert drafts(2) == [[], []]
    monkeypatch.setattr(drafting, "PRIOR_RATE", drafting.LONE_PRIOR_RATE)
    assert drafts(2) != [[], []]  # the batch's own, cautious guess kept it from drafting


def test_a_lone_stream_drafts_long_when_drafts_are_accepted() -> None:
    (taken,) = plan(1, [(list(range(8)), 0.95)], CPU, room=511)
    assert taken == 7  # 8 tokens: cheaper than 9, and worth it
    (taken,) = plan(1, [(list(range(8)), 0.3)], CPU, room=511)
    assert taken == 0  # a step of 2 tokens costs twice one: not worth a likely miss


def test_a_full_batch_drafts_nothing_when_a_draft_costs_a_pass_of_its_own() -> None:
    drafts = [(list(range(8)), 0.5) for _ in range(8)]
    assert plan(8, drafts, CPU_BATCH, room=504) == [0] * 8
    drafts[3] = (list(range(8)), 0.99)  # even a near-certain one: it would double the step
    assert plan(8, drafts, CPU_BATCH, room=504) == [0] * 8
    cheap = costs(8, {8: 29.4, 15: 31.0})  # where a step of 15 tokens is measured cheap
    assert plan(8, drafts, cheap, room=504)[3] == 7


def test_two_streams_draft_when_it_pays() -> None:
    drafts = [(list(range(8)), 0.95), (list(range(8)), 0.2)]
    taken = plan(2, drafts, CPU, room=510)
    assert taken[0] >= 5
    assert taken[1] == 0


def test_the_batch_room_bounds_the_drafts() -> None:
    assert plan(1, [(list(range(8)), 1.0)], CPU, room=3) == [3]
    assert plan(1, [(list(range(8)), 1.0)], CPU, room=0) == [0]
    assert plan(1, [], CPU, room=10) == []


def test_step_costs_guess_unseen_steps_from_the_nearest_seen() -> None:
    assert StepCosts().estimate(1, 10) == 4.5  # nothing seen: only the ratios matter
    measured = costs(1, {1: 0.01})
    assert measured.estimate(1, 1) == 0.01
    assert abs(measured.estimate(1, 10) - 0.05) < 1e-9
    measured.observe(1, 10, 0.03)
    assert measured.estimate(1, 10) == 0.03
    measured.observe(1, 10, 0.04)  # a moving average
    assert 0.03 < measured.estimate(1, 10) < 0.04


def test_a_draft_beside_other_sequences_costs_a_pass_of_its_own() -> None:
    measured = costs(1, LONE)
    measured.observe(8, 8, 29.4)
    # 8 sequences of one token, then the draft's 7 tokens alone: two passes.
    assert measured.estimate(8, 15) == 29.4 + LONE[7]
    measured.observe(8, 15, 50.0)
    assert measured.estimate(8, 15) == 50.0
    # Never at one token a sequence: guessed from a lone step of as many tokens.
    assert measured.estimate(4, 4) == LONE[4]


def test_measures_are_forgotten_now_and_then() -> None:
    measured = costs(1, {1: 0.01, 8: 0.5})  # a slow outlier at 8
    for _ in range(StepCosts.FORGET):
        measured.observe(1, 1, 0.01)
    assert measured.estimate(1, 8) == 0.01 * 3.7 / 0.9  # guessed again, not the outlier


@pytest.mark.parametrize(
    ("recurrent", "hybrid", "drafts"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_models_whose_state_cannot_rewind_never_draft(
    monkeypatch: pytest.MonkeyPatch, recurrent: bool, hybrid: bool, drafts: bool
) -> None:
    """Refused draft tokens leave the cache; a recurrent (Mamba, RWKV) or hybrid model's state
    cannot give back its last tokens, so its engine gets no drafting."""
    model: Any = SimpleNamespace(model=object())
    monkeypatch.setattr(llama_cpp, "llama_model_is_recurrent", lambda _: recurrent)
    monkeypatch.setattr(llama_cpp, "llama_model_is_hybrid", lambda _: hybrid)
    assert llama_engine._can_rewind(model) is drafts


def test_the_drafter_drafts_for_the_sequences_that_have_a_match_and_counts() -> None:
    assert Drafter(0).lookup([1, 2, 1]) is None  # APP_DRAFT_TOKENS=0: no drafting
    drafter = Drafter(4)
    for size in range(2, 8):  # steps of two sequences, measured nearly flat in their size
        drafter.costs.observe(2, size, 10 + size / 10)
    copying = drafter.lookup([5, 6, 7, 8, 9, 10, 5, 6])
    novel = drafter.lookup([1, 2, 3])
    (draft, match), (nothing, _) = drafter.drafts([(copying, 100), (novel, 100)], room=64)
    assert (draft, match) == ([7, 8, 9, 10], 2)  # all of it: extra tokens cost next to nothing
    assert nothing == []
    drafter.checked(match, len(draft), 2, refused=True)
    assert drafter.counts == (4, 2)
    (draft, _), _ = drafter.drafts([(copying, 1), (novel, 1)], room=64)
    assert draft == [7]  # no further than the request may still write
