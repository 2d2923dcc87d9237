"""The subset of regular expressions that a grammar can hold a JSON string to (``pattern``):
a parser into a small syntax tree (characters as code point ranges, sequences, alternatives,
repetitions, anchors) and the set operations on code point ranges that the tree needs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


class PatternError(Exception):
    """A regular expression outside the subset that becomes a grammar."""


Ranges = tuple[tuple[int, int], ...]
UNIVERSE: Ranges = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # no surrogates: UTF-8 has none
SPECIAL: Ranges = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))  # written escaped in JSON strings
NON_ASCII: Ranges = ((0x80, 0xD7FF), (0xE000, 0x10FFFF))


def norm(ranges: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        first, last = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if first <= last:
            out.append((first, last))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    start = 0
    for first, last in ranges:
        if first > start:
            out.append((start, first - 1))
        start = last + 1
    if start <= 0x10FFFF:
        out.append((start, 0x10FFFF))
    return intersect(tuple(out), UNIVERSE)


def subtract(a: Ranges, b: Ranges) -> Ranges:
    return intersect(a, complement(b))


@dataclass(frozen=True)
class Chars:
    """A character class of a pattern: ``lo`` holds only characters that both Python's ``re``
    and ECMAScript match, ``hi`` every character that either may match (``\\w`` differs beyond
    ASCII); the grammar writes ``lo``, and a negated class is built from ``hi``."""

    lo: Ranges
    hi: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    node: Node
    low: int
    high: int | None


@dataclass(frozen=True)
class Anchor:
    kind: str


Node = Chars | Seq | Alt | Repeat | Anchor


def one(char: str) -> Chars:
    code = ord(char)
    return Chars(((code, code),), ((code, code),))


# Within ASCII both read \d, \w and \s alike (but Python's \s also matches U+001C-U+001F);
# beyond it they differ, so ``hi`` takes in all of it.
DIGIT = Chars(((0x30, 0x39),), norm([(0x30, 0x39), *NON_ASCII]))
WORD_ASCII = norm([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
WORD = Chars(WORD_ASCII, norm([*WORD_ASCII, *NON_ASCII]))
SPACE = Chars(((0x09, 0x0D), (0x20, 0x20)), norm([(0x09, 0x0D), (0x1C, 0x20), *NON_ASCII]))
SHORTHANDS = {
    "d": DIGIT,
    "D": Chars(complement(DIGIT.hi), complement(DIGIT.lo)),
    "w": WORD,
    "W": Chars(complement(WORD.hi), complement(WORD.lo)),
    "s": SPACE,
    "S": Chars(complement(SPACE.hi), complement(SPACE.lo)),
}
# ECMAScript's '.' also leaves out \r, U+2028 and U+2029.
DOT = Chars(
    subtract(UNIVERSE, ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))),
    subtract(UNIVERSE, ((0x0A, 0x0A),)),
)
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


class RegexParser:
    """Parses the subset of regular expressions that Python's ``re`` and ECMAScript read alike
    and a grammar can express."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def parse(self) -> Node:
        node = self._alternation()
        if self.pos < len(self.text):
            raise PatternError(f"an unbalanced ')' at offset {self.pos}")
        return node

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _alternation(self) -> Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def _sequence(self) -> Node:
        items: list[Node] = []
        while self.pos < len(self.text) and self._peek() not in "|)":
            items.append(self._quantified(self._atom()))
        return Seq(tuple(items))

    def _atom(self) -> Node:
        start = self.pos
        char = self.text[start]
        self.pos += 1
        if char == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self.text.startswith("?P<", self.pos) and ">" in self.text[self.pos :]:
                self.pos = self.text.index(">", self.pos) + 1
            elif self._peek() == "?":
                raise PatternError(
                    f"the group at offset {start} (lookarounds, flags and named back "
                    "references are not supported)"
                )
            inner = self._alternation()
            if self._peek() != ")":
                raise PatternError(f"the group at offset {start} is not closed")
            self.pos += 1
            return inner
        if char == "[":
            return self._class(start)
        if char == ".":
            return DOT
        if char in "^$":
            return Anchor(char)
        if char == "\\":
            return self._escape(in_class=False)
        if char in "*+?" or (char == "{" and QUANTIFIER.match(self.text, start)):
            raise PatternError(f"nothing to repeat at offset {start}")
        return one(char)

    def _quantified(self, atom: Node) -> Node:
        char = self._peek()
        high: int | None
        if char in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        elif char == "{" and (match := QUANTIFIER.match(self.text, self.pos)):
            if not match.group(1):
                raise PatternError(f"the quantifier at offset {self.pos} has no minimum")
            low = int(match.group(1))
            high = low if not match.group(2) else int(match.group(3)) if match.group(3) else None
            if high is not None and high < low:
                raise PatternError(f"the quantifier at offset {self.pos} is out of order")
            self.pos = match.end()
        else:
            return atom
        if isinstance(atom, Anchor):
            raise PatternError("a quantifier on an anchor")
        if self._peek() == "?":  # lazy: the same strings match
            self.pos += 1
        if self._peek() in ("*", "+", "?") or (
            self._peek() == "{" and QUANTIFIER.match(self.text, self.pos)
        ):
            raise PatternError(f"a repeated quantifier at offset {self.pos}")
        return Repeat(atom, low, high)

    def _escape(self, *, in_class: bool) -> Chars:
        if self.pos >= len(self.text):
            raise PatternError("a trailing backslash")
        char = self.text[self.pos]
        self.pos += 1
        if char in SHORTHANDS:
            return SHORTHANDS[char]
        if char in SIMPLE_ESCAPES:
            return one(SIMPLE_ESCAPES[char])
        if char == "b" and in_class:
            return one("\b")
        if char == "0" and not self._peek().isdigit():
            return one("\0")
        if char in ("x", "u"):
            digits = self.text[self.pos : self.pos + (2 if char == "x" else 4)]
            if len(digits) != (2 if char == "x" else 4) or not all(
                d in "0123456789abcdefABCDEF" for d in digits
            ):
                raise PatternError(f"a bad '\\{char}' escape at offset {self.pos - 2}")
            self.pos += len(digits)
            return one(chr(int(digits, 16)))
        if char.isascii() and char.isalnum():
            raise PatternError(
                f"'\\{char}' at offset {self.pos - 2} (word boundaries, anchors other than ^ "
                "and $, back references and properties are not supported)"
            )
        return one(char)

    def _class(self, start: int) -> Chars:
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        if self._peek() == "]":
            raise PatternError(f"the class at offset {start} starts with ']'")
        lo: list[tuple[int, int]] = []
        hi: list[tuple[int, int]] = []
        while self._peek() != "]":
            if self.pos >= len(self.text):
                raise PatternError(f"the class at offset {start} is not closed")
            item = self._class_item()
            if self._peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                first, last = self._single(item), self._single(self._class_item())
                if first > last:
                    raise PatternError(f"a range out of order before offset {self.pos}")
                item = Chars(((first, last),), ((first, last),))
            lo.extend(item.lo)
            hi.extend(item.hi)
        self.pos += 1
        lo_set, hi_set = intersect(norm(lo), UNIVERSE), norm(hi)
        if negate:
            return Chars(complement(hi_set), complement(lo_set))
        return Chars(lo_set, hi_set)

    def _class_item(self) -> Chars:
        char = self.text[self.pos]
        self.pos += 1
        if char == "\\":
            return self._escape(in_class=True)
        # Python reads these as literals but warns that they will become set operations.
        if char == "[" and self._peek() in (":", ".", "="):
            raise PatternError("POSIX classes are not supported")
        if char == "[" or (char in "&~|-" and self._peek() == char):
            raise PatternError(f"an unescaped '{char}' inside a class is ambiguous")
        return one(char)

    @staticmethod
    def _single(item: Chars) -> int:
        if len(item.lo) != 1 or item.lo[0][0] != item.lo[0][1]:
            raise PatternError("a range whose end is a class")
        return item.lo[0][0]


def has_anchor(node: Node) -> bool:
    if isinstance(node, Anchor):
        return True
    if isinstance(node, Seq):
        return any(has_anchor(item) for item in node.items)
    if isinstance(node, Alt):
        return any(has_anchor(option) for option in node.options)
    if isinstance(node, Repeat):
        return has_anchor(node.node)
    return False


def nullable(node: Node) -> bool:
    """Whether ``node`` matches the empty string."""
    if isinstance(node, Chars):
        return False
    if isinstance(node, Seq):
        return all(nullable(item) for item in node.items)
    if isinstance(node, Alt):
        return any(nullable(option) for option in node.options)
    if isinstance(node, Repeat):
        return node.low == 0 or nullable(node.node)
    return True


def nonempty(node: Node) -> Node | None:
    """What ``node`` matches but the empty string; None when that is nothing."""
    if not nullable(node):
        return node
    options: list[Node] = []
    if isinstance(node, Alt):
        options = [n for n in map(nonempty, node.options) if n is not None]
    elif isinstance(node, Repeat):
        inner = nonempty(node.node)
        if inner is not None and node.high != 0:
            options = [Repeat(inner, 1, node.high)]
    elif isinstance(node, Seq):  # every item may be empty: one is the first that is not
        for index, item in enumerate(node.items):
            first = nonempty(item)
            if first is not None:
                options.append(Seq((first, *node.items[index + 1 :])))
    if not options:
        return None
    return options[0] if len(options) == 1 else Alt(tuple(options))


def codes(chars: Iterable[str]) -> Ranges:
    return norm((ord(c), ord(c)) for c in chars)


def contains(ranges: Ranges, code: int) -> bool:
    return any(first <= code <= last for first, last in ranges)
