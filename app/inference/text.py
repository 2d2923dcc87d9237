"""Turning generated token bytes into text a client may see."""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class StopMatcher:
    """Finds stop sequences in streamed text without ever releasing part of one.

    Text that could still become a stop sequence (a suffix equal to a stop's prefix) is held back
    until the next piece decides it, so a stop split across tokens never leaks its first half.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.matched: str | None = None
        """The stop sequence that was reached, once one was."""

    def feed(self, text: str) -> tuple[str, bool]:
        """Adds ``text``; returns (text safe to release, whether a stop sequence was reached).

        After a stop is reached the released text ends right before it; the rest is dropped.
        """
        if not self._stops:
            return text, False
        buffer = self._pending + text
        hits = [(i, stop) for stop in self._stops if (i := buffer.find(stop)) >= 0]
        if hits:
            self._pending = ""
            at, self.matched = min(hits, key=lambda hit: hit[0])
            return buffer[:at], True
        hold = max((_overlap(buffer, stop) for stop in self._stops), default=0)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Releases what was held back, at the end of a generation that hit no stop."""
        pending, self._pending = self._pending, ""
        return pending


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


class Utf8Stream:
    """Decodes token bytes incrementally: a character split across tokens waits for its rest."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """Text completed by ``data``."""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """What is left at the end. A character the generation stopped in the middle of (cut
        by ``max_tokens``) is dropped: the text ends at the last whole character."""
        buffered, _ = self._decoder.getstate()
        self._decoder.reset()
        if buffered and _incomplete(buffered):
            return ""
        return codecs.decode(buffered, "utf-8", errors="replace") if buffered else ""


def _incomplete(data: bytes) -> bool:
    """Whether ``data`` is the beginning of a UTF-8 character (a lead byte and continuations
    that could still be completed)."""
    lead = data[0]
    needed = (
        2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 0
    )
    return 0 < len(data) < needed and all(b >> 6 == 0b10 for b in data[1:])
