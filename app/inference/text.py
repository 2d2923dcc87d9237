"""Turning generated token bytes into text a client may see: a request's token stream, the
UTF-8 assembly and the stop sequences it is made of."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable
from typing import Protocol

from app.inference.engine import Finished, FinishReason, TextDelta, TokenLogprob


class Constraint(Protocol):
    """What a token stream asks of a grammar: whether it holds the text now."""

    @property
    def constraining(self) -> bool: ...


class TokenStream:
    """The events of one request's generated tokens: text (with its tokens' log probabilities)
    as soon as it is safe to show, and ``Finished`` at the end.

    Text waits while a character is unfinished or a stop sequence may be starting; a stop
    sequence ends the text before it, and the tokens that made it are not returned. Under a
    grammar that is constraining, stop sequences do not apply (they would cut its JSON or its
    calls) and what they held back goes out.
    """

    def __init__(
        self,
        emit: Callable[[object], None],
        *,
        stops: Iterable[str],
        max_tokens: int,
        prompt_tokens: int,
        cached_tokens: int,
        grammar: Constraint | None = None,
    ) -> None:
        self._emit = emit
        self._utf8 = Utf8Stream()
        self._stops = StopMatcher(stops)
        self._pending: list[TokenLogprob] = []
        self._grammar = grammar
        self._hit = False
        self._prompt_tokens = prompt_tokens
        self._cached_tokens = cached_tokens
        self.max_tokens = max_tokens
        self.generated = 0

    @property
    def remaining(self) -> int:
        """Tokens the request may still generate."""
        return self.max_tokens - self.generated

    def push(self, piece: bytes, logprob: TokenLogprob | None = None) -> FinishReason | None:
        """Counts one generated token (its bytes, and its log probability when asked for) and
        sends the text it completes; returns why the generation ends here (a stop sequence
        reached, ``max_tokens`` written), or None."""
        self.generated += 1
        if logprob is not None:
            self._pending.append(logprob)
        text, self._hit = self._visible(self._utf8.feed(piece))
        if self._hit:
            self._pending.clear()  # those tokens made the stop sequence, which is not returned
        if text:
            self._emit(TextDelta(text, tuple(self._pending), self.generated))
            self._pending.clear()
        if self._hit:
            return "stop"
        return "length" if self.generated >= self.max_tokens else None

    def finish(self, reason: FinishReason) -> None:
        """Sends what was held back (unless a stop sequence was reached) and ``Finished``."""
        if not self._hit:
            # Release what was held back: an unfinished character, a partial stop sequence.
            tail, self._hit = self._visible(self._utf8.flush())
            tail = tail if self._hit else tail + self._stops.flush()
            if tail or self._pending:
                self._emit(TextDelta(tail, tuple(self._pending), self.generated))
        self._emit(
            Finished(
                reason=reason,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self.generated,
                stop_sequence=self._stops.matched,
                cached_tokens=self._cached_tokens,
            )
        )

    def _visible(self, text: str) -> tuple[str, bool]:
        """The text that may go out now, and whether a stop sequence was reached."""
        if self._grammar is not None and self._grammar.constraining:
            return self._stops.flush() + text, False
        return self._stops.feed(text)


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
