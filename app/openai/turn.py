"""A reply as protocol-neutral parts (text, a call beginning, pieces of its arguments, the end),
which the Responses and Messages APIs shape as their protocols do. The parts are read from the
chat completion's own stream deltas, so every protocol gets the same text and calls."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.inference.engine import Finished
from app.openai.protocol_chat import ChatFinishReason, Delta
from app.openai.serving_base import Events, Job


class DeltaSource(Protocol):
    """What turns a reply's text into chat stream deltas (``serving_chat``'s choice stream)."""

    def feed(self, text: str) -> list[dict[str, Any]]: ...

    def finish(self, finished: Finished) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ReplyText:
    """Text of the reply."""

    text: str


@dataclass(frozen=True)
class ReplyCall:
    """A call begins: its id and function (its arguments follow)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ReplyArguments:
    """A piece of a call's arguments (compact JSON)."""

    index: int
    arguments: str


@dataclass(frozen=True)
class ReplyEnd:
    """The reply is over."""

    reason: ChatFinishReason
    finished: Finished


ReplyPart = ReplyText | ReplyCall | ReplyArguments | ReplyEnd


@dataclass
class Reply:
    """A whole reply, gathered from its parts."""

    text: str = ""
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, name, arguments) of each whole call."""
    end: ReplyEnd | None = None


class Turn:
    """A started reply; its parts come as they are generated. The job's slot, usage and
    metrics are handled as for a chat completion; closing the parts early cancels it."""

    def __init__(self, job: Job, deltas: DeltaSource, events: Events, *, live: bool) -> None:
        self.job = job
        self._deltas = deltas
        self._events = events
        self._live = live  # whether the events have begun (closing them then stops the job)

    @property
    def prompt_tokens(self) -> int:
        return self.job.prompt_tokens

    async def parts(self) -> AsyncGenerator[ReplyPart]:
        """The reply's parts, ``ReplyEnd`` last."""
        self._live = True
        choice = self._deltas
        try:
            async for _, event in self._events:
                if isinstance(event, Finished):
                    deltas = choice.finish(event)
                else:
                    deltas = choice.feed(event.text)
                for item in deltas:
                    for part in _parts(item["delta"], item.get("finish_reason"), event):
                        yield part
        finally:
            await self._events.aclose()

    async def close(self) -> None:
        """Ends the turn: its generation stops, and what it holds (the caller's slot, the
        model's lease) is given back even if its parts were never read."""
        if self._live:
            await self._events.aclose()
        else:  # never begun: the generator's own cleanup would never run
            self._live = True
            await self.job.held.aclose()

    async def reply(self) -> Reply:
        """The whole reply. A call cut by ``max_tokens`` is left out."""
        reply = Reply()
        text: list[str] = []
        calls: dict[int, tuple[str, str, list[str]]] = {}
        async for part in self.parts():
            if isinstance(part, ReplyText):
                text.append(part.text)
            elif isinstance(part, ReplyCall):
                calls[part.index] = (part.id, part.name, [])
            elif isinstance(part, ReplyArguments):
                calls[part.index][2].append(part.arguments)
            else:
                reply.end = part
        reply.text = "".join(text)
        for call_id, name, pieces in calls.values():
            arguments = "".join(pieces)
            if whole_arguments(arguments):
                reply.calls.append((call_id, name, arguments))
        if reply.calls:
            reply.text = reply.text.strip()
        return reply


def _parts(delta: Delta, reason: ChatFinishReason | None, event: object) -> list[ReplyPart]:
    parts: list[ReplyPart] = []
    if isinstance(delta.content, str) and delta.content:
        parts.append(ReplyText(delta.content))
    for call in delta.tool_calls or ():
        if isinstance(call.id, str) and isinstance(call.function.name, str):
            parts.append(ReplyCall(call.index, call.id, call.function.name))
        elif isinstance(call.function.arguments, str) and call.function.arguments:
            parts.append(ReplyArguments(call.index, call.function.arguments))
    if reason is not None and isinstance(event, Finished):
        parts.append(ReplyEnd(reason, event))
    return parts


def whole_arguments(arguments: str) -> bool:
    """Whether a call's arguments are a whole JSON object (not cut short by max_tokens)."""
    try:
        return isinstance(json.loads(arguments), dict)
    except (ValueError, RecursionError):
        return False
