"""Reading tool calls out of generated text, whole or as it streams.

Text before the calls region (which starts where the format's opening is first found) is
content; the region itself is JSON objects, one per call, that the grammar held to the tools'
schemas, and a small scanner reads their names and arguments as the text comes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.inference.tool_formats import ToolFormat


@dataclass
class CallDelta:
    """What the scanner learned of call ``index``: its name, or more of its arguments."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class ScannedCall:
    """A call read from the text; ``complete`` once its object closed."""

    name: str = ""
    arguments: str = ""
    complete: bool = False


class CallScanner:
    """Reads tool calls from the text of a calls region, piece by piece.

    The region is JSON objects, one per call, with framing between them (separators, tags); the
    grammar fixes their shape, so a small state machine over strings and nesting suffices: at
    the top level of an object it reads keys, the ``name`` value, and passes the arguments value
    through as it comes.
    """

    _ARGUMENTS_KEYS = ("arguments", "parameters")

    def __init__(self) -> None:
        self.calls: list[ScannedCall] = []
        self._depth = 0  # of objects and arrays, 1 = a call object's top level
        self._string: list[str] | None = None  # the string being read, outside arguments
        self._escape = False
        self._key: str | None = None
        self._after_colon = False
        self._arguments: list[str] | None = None  # the arguments value, while it is read
        self._arg_depth = 0
        self._arg_string = False
        self._arg_started = False  # any of the arguments value read yet

    def feed(self, text: str) -> list[CallDelta]:
        """Reads ``text``; returns what it added to the calls."""
        deltas: list[CallDelta] = []
        for char in text:
            if self._arguments is not None:
                self._argument_char(char, deltas)
            else:
                self._structure_char(char, deltas)
        self._flush_arguments(deltas)
        return deltas

    def _flush_arguments(self, deltas: list[CallDelta]) -> None:
        if self._arguments and self.calls:
            piece = "".join(self._arguments)
            self.calls[-1].arguments += piece
            if deltas and deltas[-1].index == len(self.calls) - 1 and deltas[-1].name is None:
                deltas[-1].arguments += piece
            else:
                deltas.append(CallDelta(len(self.calls) - 1, arguments=piece))
            self._arguments.clear()

    def _argument_char(self, char: str, deltas: list[CallDelta]) -> None:
        assert self._arguments is not None
        if not self._arg_string and char.isspace():
            return  # arguments go out compact, as OpenAI writes them, streamed or not
        if self._arg_string:
            self._arguments.append(char)
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._arg_string = False
                if self._arg_depth == 0:
                    self._end_arguments(deltas)
            return
        if self._arg_depth == 0 and self._arg_started and char in ",}":
            self._end_arguments(deltas)  # a bare scalar ends at what follows it
            self._structure_char(char, deltas)
            return
        self._arg_started = True
        self._arguments.append(char)
        if char == '"':
            self._arg_string = True
        elif char in "{[":
            self._arg_depth += 1
        elif char in "}]":
            self._arg_depth -= 1
            if self._arg_depth == 0:
                self._end_arguments(deltas)

    def _end_arguments(self, deltas: list[CallDelta]) -> None:
        self._flush_arguments(deltas)
        self._arguments = None
        self._key, self._after_colon = None, False

    def _structure_char(self, char: str, deltas: list[CallDelta]) -> None:
        if self._string is not None:
            if self._escape:
                self._escape = False
                self._string.append("\\" + char)
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._string_done("".join(self._string), deltas)
                self._string = None
            else:
                self._string.append(char)
            return
        if char == '"':
            self._string = []
        elif char in "{[":
            self._depth += 1
            if self._depth == 1 and char == "{":
                self.calls.append(ScannedCall())
                self._key, self._after_colon = None, False
        elif char in "}]":
            if self._depth == 1 and char == "}" and self.calls:
                self.calls[-1].complete = True
            self._depth = max(self._depth - 1, 0)
        elif char == ":" and self._depth == 1 and self._key is not None:
            self._after_colon = True
            if self._key in self._ARGUMENTS_KEYS:
                self._arguments, self._arg_depth, self._arg_string = [], 0, False
                self._arg_started = False
        elif char == "," and self._depth == 1:
            self._key, self._after_colon = None, False

    def _string_done(self, raw: str, deltas: list[CallDelta]) -> None:
        if self._depth != 1 or not self.calls:
            return
        value = json.loads(f'"{raw}"')
        if not self._after_colon:
            self._key = value
        elif self._key == "name":
            self.calls[-1].name = value
            deltas.append(CallDelta(len(self.calls) - 1, name=value))


class ToolCallReader:
    """Splits generated text into content and tool calls, as it streams.

    Text before the calls region is content; a stretch that could still become the opening is
    held back until it is decided. (When a call is forced, the grammar puts the opening first, so
    there is no content.)
    """

    def __init__(self, format: ToolFormat) -> None:
        self.format = format
        self.scanner = CallScanner()
        self._opening = re.compile(format.opening_regex)
        self._held = ""
        self._content: list[str] = []
        self.calling = False
        """Whether the calls region has begun."""

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        """Adds ``text``; returns the content it releases and the call deltas it makes."""
        if self.calling:
            return "", self.scanner.feed(text)
        buffer = self._held + text
        match = self._opening.search(buffer)
        if match:
            self.calling, self._held = True, ""
            before = buffer[: match.start()]
            self._content.append(before)
            start = match.start() if self.format.opening_in_call else match.end()
            return before, self.scanner.feed(buffer[start:])
        hold = self._could_open(buffer)
        released, self._held = buffer[: len(buffer) - hold], buffer[len(buffer) - hold :]
        self._content.append(released)
        return released, []

    def finish(self) -> str:
        """The content held back to the end (it never became an opening)."""
        held, self._held = self._held, ""
        if not self.calling:
            self._content.append(held)
            return held
        return ""

    @property
    def content(self) -> str:
        """All the content released so far."""
        return "".join(self._content)

    @property
    def calls(self) -> list[ScannedCall]:
        return self.scanner.calls

    def _could_open(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that could still grow into the opening."""
        first = next(p for p in self.format.opening if p is not None)[0]
        start = buffer.rfind(first)
        while start >= 0:
            if _prefix_of(buffer[start:], self.format.opening):
                return len(buffer) - start
            start = buffer.rfind(first, 0, start)
        return 0


def _prefix_of(text: str, opening: Sequence[str | None]) -> bool:
    """Whether ``text`` is the beginning of something ``opening`` matches."""
    position = 0
    for piece in opening:
        if position == len(text):
            return True
        if piece is None:
            while position < len(text) and text[position] in " \t\n":
                position += 1
            continue
        overlap = text[position : position + len(piece)]
        if not piece.startswith(overlap):
            return False
        position += len(overlap)
    return position == len(text)
