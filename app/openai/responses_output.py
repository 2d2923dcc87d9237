"""A Responses reply's output: the items of a finished reply, and, while it streams, the items
built part by part with the events that say so (``event:`` lines numbered in order)."""

from __future__ import annotations

from typing import Any

import msgspec

from app.inference.engine import Finished
from app.openai.protocol_chat import (
    Message,
)
from app.openai.protocol_responses import (
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    item_id,
)
from app.openai.protocol_tools import (
    FunctionCall,
    ToolCallView,
)
from app.openai.turn import ReplyArguments, ReplyCall, ReplyEnd, ReplyText, Turn, whole_arguments


class Output:
    """A finished reply as output items, and as the assistant turn a follow-up continues."""

    def __init__(
        self, items: list[OutputItem], message: Message, finished: Finished, cut: bool
    ) -> None:
        self.items = items
        self.message = message
        self.finished = finished
        self.cut = cut


async def reply_output(turn: Turn) -> Output:
    """The whole reply as output items: the items a stream of it ends with."""
    builder = OutputBuilder()
    async for part in turn.parts():
        builder.feed(part)
    builder.finish()
    return builder.result()


class OutputBuilder:
    """Output items built from a reply's parts as they come, with the events that say so."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._open: OutputMessage | OutputFunctionCall | None = None
        self._text: list[str] = []  # every text of the reply
        self._pieces: list[str] = []  # the open item's text or arguments, joined when it closes
        self._blank: list[str] = []  # whitespace not yet known to be a message's or a call's
        self._calls: list[ToolCallView] = []
        self._end: ReplyEnd | None = None

    def feed(self, part: object) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        index = len(self.items) - 1
        if isinstance(part, ReplyText):
            self._text.append(part.text)
            text = part.text
            if not isinstance(self._open, OutputMessage):
                if not text.strip():  # the whitespace before a call makes no message of its own
                    self._blank.append(text)
                    return events
                events += self.close()
                events += self._open_message()
                text, self._blank = "".join(self._blank) + text, []
            assert isinstance(self._open, OutputMessage)
            events.append(self._text_delta(text))
        elif isinstance(part, ReplyCall):
            self._blank = []
            events += self.close(before_call=True)
            call = OutputFunctionCall(
                id=item_id("fc"),
                call_id=part.id,
                name=part.name,
                arguments="",
                status="in_progress",
            )
            self._open = call
            self.items.append(call)
            events.append(
                (
                    "response.output_item.added",
                    {"output_index": len(self.items) - 1, "item": _now(call)},
                )
            )
        elif isinstance(part, ReplyArguments) and isinstance(self._open, OutputFunctionCall):
            self._pieces.append(part.arguments)
            events.append(
                (
                    "response.function_call_arguments.delta",
                    {"item_id": self._open.id, "output_index": index, "delta": part.arguments},
                )
            )
        elif isinstance(part, ReplyEnd):
            self._end = part
        return events

    def _open_message(self) -> list[tuple[str, dict[str, Any]]]:
        item = OutputMessage(id=item_id("msg"), status="in_progress", content=[])
        self._open = item
        self.items.append(item)
        index = len(self.items) - 1
        added = _now(item)  # its part is added next
        part = OutputText(text="")
        item.content.append(OutputText(text=""))
        return [
            ("response.output_item.added", {"output_index": index, "item": added}),
            (
                "response.content_part.added",
                {"item_id": item.id, "output_index": index, "content_index": 0, "part": part},
            ),
        ]

    def _text_delta(self, text: str) -> tuple[str, dict[str, Any]]:
        """``text`` added to the open message, and the event that says so."""
        assert isinstance(self._open, OutputMessage)
        self._pieces.append(text)
        fields = {
            "item_id": self._open.id,
            "output_index": len(self.items) - 1,
            "content_index": 0,
            "delta": text,
            "logprobs": [],
        }
        return "response.output_text.delta", fields

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """The events that end the reply: the open item's, or, for a reply of no text and no
        call, those of an empty message (as ``reply_output`` gives it)."""
        if not self.items:
            events = self._open_message()
            if blank := "".join(self._blank):  # a reply of whitespace: that is its text
                events.append(self._text_delta(blank))
            self._blank = []
            return events + self.close()
        return self.close()

    def close(self, *, before_call: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The events that finish the open item (``before_call``: a call comes next)."""
        item, self._open = self._open, None
        if item is None:
            return []
        joined, self._pieces = "".join(self._pieces), []
        if isinstance(item, OutputMessage) and (before_call or self._calls):
            joined = joined.strip()  # what is written beside calls, without the space around
        index = len(self.items) - 1
        cut = self._end is not None and self._end.reason == "length"
        if isinstance(item, OutputFunctionCall):  # complete when its arguments are
            item.status = "completed" if whole_arguments(joined) else "incomplete"
        else:
            item.status = "incomplete" if cut else "completed"
        if isinstance(item, OutputMessage):
            part = item.content[0]
            part.text = joined
            return [
                (
                    "response.output_text.done",
                    {
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "text": part.text,
                        "logprobs": [],
                    },
                ),
                (
                    "response.content_part.done",
                    {
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "part": _now(part),
                    },
                ),
                ("response.output_item.done", {"output_index": index, "item": _now(item)}),
            ]
        item.arguments = joined
        if item.status == "completed":  # a call cut short is not part of the conversation
            self._calls.append(
                ToolCallView(
                    id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
                )
            )
        return [
            (
                "response.function_call_arguments.done",
                {
                    "item_id": item.id,
                    "output_index": index,
                    "name": item.name,
                    "arguments": item.arguments,
                },
            ),
            ("response.output_item.done", {"output_index": index, "item": _now(item)}),
        ]

    def result(self) -> Output:
        """The finished reply: its items, less a call cut short (the events showed it
        ``incomplete``; its partial arguments are no call to run), and its conversation turn."""
        assert self._end is not None
        text = "".join(self._text)
        if any(isinstance(item, OutputFunctionCall) for item in self.items):
            text = text.strip()  # beside calls, without the space around them
        message = Message(role="assistant", content=text or None, tool_calls=self._calls or None)
        cut = self._end.reason == "length"
        items = self.items
        if items and isinstance(items[-1], OutputFunctionCall) and items[-1].status != "completed":
            items = items[:-1]  # the reply's end cut it short (nothing comes after it)
        return Output(items, message, self._end.finished, cut)


def _now(item: msgspec.Struct) -> Any:
    """The item as it is now (events are written after the item has changed further)."""
    return msgspec.to_builtins(item)


class EventWriter:
    """Server-sent events named by their type, numbered in order."""

    def __init__(self) -> None:
        self._sequence = 0

    def __call__(self, kind: str, /, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"
