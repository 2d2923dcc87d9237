"""``APP_CONTEXT_OVERFLOW=drop_oldest``: which of a long chat's oldest turns go so that it fits
the model's context.

A turn is a user message with what followed it up to the next one (the answer, its calls and
their results). System and developer messages belong to no turn and are never dropped, nor is
the current turn. Turns go in steps of a quarter of the context: a conversation that grows by a
turn at a time keeps dropping the same turns for a while, so its prompt keeps the same prefix
and the slot's cache is reused, instead of the kept part shifting on every request. How many is
found by bisection (fewer dropped, a longer prompt): a conversation of n turns is rendered and
tokenized about log2(n) + 2 times.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

DROPPED_HEADER = "x-context-dropped-messages"
"""How many of a chat's oldest messages were dropped to fit the context."""


async def turns_to_drop(
    turns: int, length: Callable[[int], Awaitable[int]], *, context: int, answer: int
) -> int:
    """How many of the ``turns`` oldest turns to drop (0: none, it fits already or nothing
    would make it fit), given ``length(n)``, the prompt's tokens with the n oldest gone, and
    the tokens ``answer`` wants. Where the steps cannot get far enough (a long system prompt),
    the fewest turns that leave room for the answer go; where the current turn leaves less than
    that, all of them, and the answer gets what is left."""
    whole = await length(0)
    if whole + answer <= context or not turns:
        return 0
    least = await length(turns)
    if least >= context:
        return 0  # the current turn alone is too long: the usual 400
    step = max(context // 4, 1)
    over = whole + answer - context
    target = whole - step * -(-over // step)  # whole less `over`, rounded up to steps
    if least > target:
        target = context - answer
    if least > target:
        return turns
    short, enough = 0, turns  # dropping `short` is too few, `enough` reaches the target
    while enough - short > 1:
        middle = (short + enough) // 2
        if await length(middle) <= target:
            enough = middle
        else:
            short = middle
    return enough


def older_turns(messages: Sequence[Any]) -> list[list[int]]:
    """The turns before the current one, oldest first, as the indexes of their messages: each
    runs from a user message (or the chat's first message that is not a system or developer
    one) to the next user message. System and developer messages belong to no turn. The
    current turn runs from the last user message on; where tool results come right before it
    (Anthropic's tool results and text in one user message), from the user message that led
    to the calls they answer."""
    current = max((i for i, m in enumerate(messages) if m.role == "user"), default=0)
    results = current  # the tool results right before the last user message, if any
    while results > 0 and messages[results - 1].role == "tool":
        results -= 1
    unanswered = {m.tool_call_id for m in messages[results:current] if m.tool_call_id}
    calls = results  # back over the assistant messages whose calls those results answer
    while unanswered and calls > 0 and messages[calls - 1].tool_calls:
        calls -= 1
        unanswered -= {call.id for call in messages[calls].tool_calls or ()}
    if calls < results:  # they belong to the turn that asked for them: the current one
        current = max((i for i in range(calls) if messages[i].role == "user"), default=calls)
    turns: list[list[int]] = []
    for i in range(current):
        role = messages[i].role
        if role in ("system", "developer"):
            continue
        if role == "user" or not turns:
            turns.append([])
        turns[-1].append(i)
    return turns


def without(messages: Sequence[Any], turns: Sequence[list[int]]) -> list[Any]:
    """``messages`` less those of ``turns``."""
    gone = {i for turn in turns for i in turn}
    return [message for i, message in enumerate(messages) if i not in gone]
