"""String schemas as GBNF: lengths, the date/time/uuid formats, and ``pattern`` regular
expressions (the subset ``regex_subset`` parses), escaped as JSON requires."""

from __future__ import annotations

import re
from typing import Any

from app.inference.json_grammar.gbnf import (
    SHORT_ESCAPES,
    atom,
    char_class,
    group,
    json_char,
    repeat,
)
from app.inference.json_grammar.schema import At, SchemaRules
from app.inference.regex_subset import (
    SPECIAL,
    Alt,
    Anchor,
    Chars,
    Node,
    PatternError,
    Ranges,
    RegexParser,
    Repeat,
    Seq,
    codes,
    has_anchor,
    intersect,
    nonempty,
    nullable,
    subtract,
)

# The shortest and longest text of each format, to tell whether minLength/maxLength hold anyway.
_FORMAT_LENGTHS = {"date": (10, 10), "time": (9, 24), "date-time": (20, 35), "uuid": (36, 36)}


class StringRules(SchemaRules):
    """The rules of string values."""

    def _string(self, schema: dict[str, Any], at: At) -> str:
        low = self._count(schema, "minLength", at) or 0
        high = self._count(schema, "maxLength", at)
        if high is not None and high < low:
            raise self._unsatisfiable(at.path, "'minLength' is above 'maxLength'")
        content: str | None = None
        lengths: tuple[int, int] | None = None
        format_ = schema.get("format")
        if format_ is not None:
            if isinstance(format_, str) and format_ in _FORMAT_LENGTHS:
                content = self.builder.primitive(format_)
                lengths = _FORMAT_LENGTHS[format_]
            else:
                self._cannot("format", "a string", at.path, f"the format {format_!r}")
        pattern = schema.get("pattern")
        if pattern is not None:
            if content is not None:
                self._cannot("pattern", "a string with 'format'", at.path)
            elif not isinstance(pattern, str):
                raise self._invalid(at.path, "'pattern' must be a string")
            else:
                try:
                    content = self._pattern(pattern)
                except PatternError as exc:
                    self._cannot("pattern", "a string", at.path, str(exc))
        if content is not None:
            fits = (
                lengths is not None and lengths[0] >= low and (high is None or lengths[1] <= high)
            )
            if not fits:
                what = "a string with 'format'" if lengths else "a string with 'pattern'"
                for keyword in ("minLength", "maxLength"):
                    if keyword in schema and (keyword == "maxLength" or low > 0):
                        self._cannot(keyword, what, at.path)
        else:
            self.builder.primitive("char")
            if (low, high) == (0, None):
                return self.builder.primitive("string")
            content = repeat("char", low, high)
        self.builder.primitive("space")
        return self.builder.rule(at.name, f'"\\"" {content} "\\"" space')

    def _pattern(self, pattern: str) -> str:
        """The GBNF of a JSON string's content (without the quotes) that matches ``pattern``
        as JSON Schema reads it: unanchored unless it starts with ``^`` or ends with ``$``."""
        cached = self.builder.patterns.get(pattern)
        if cached is None:
            try:
                cached = self._pattern_uncached(pattern)
            except PatternError as exc:
                cached = exc
            self.builder.patterns[pattern] = cached
        if isinstance(cached, PatternError):
            raise cached
        self.builder.primitive("char")
        return cached

    def _pattern_uncached(self, pattern: str) -> str:
        tree = RegexParser(pattern).parse()
        try:
            re.compile(pattern)  # what validators will run
        except re.error as exc:
            raise PatternError(f"not a regular expression ({exc})") from None
        options = tree.options if isinstance(tree, Alt) else (tree,)
        alternatives = []
        for option in options:
            items = list(option.items) if isinstance(option, Seq) else [option]
            starts = bool(items) and items[0] == Anchor("^")
            if starts:
                items.pop(0)
            ends = bool(items) and items[-1] == Anchor("$")
            if ends:
                items.pop()
            if any(has_anchor(item) for item in items):
                raise PatternError("'^' and '$' are supported only at the start and the end")
            body = self._regex(Seq(tuple(items)))
            parts = [] if starts else ["char*"]
            if body:
                parts.append(body)
            if not ends and (body or starts):
                parts.append("char*")
            alternatives.append(" ".join(parts))
        return alternatives[0] if len(alternatives) == 1 else f"({' | '.join(alternatives)})"

    def _regex(self, node: Node) -> str:
        if isinstance(node, Chars):
            return self._chars(node.lo)
        if isinstance(node, Seq):
            parts: list[str] = []
            run: list[str] = []  # single characters, written as one literal
            for item in node.items:
                if isinstance(item, Chars) and len(item.lo) == 1 and item.lo[0][0] == item.lo[0][1]:
                    run.append(json_char(chr(item.lo[0][0])))
                    continue
                if run:
                    parts.append(self.builder.literal("".join(run)))
                    run = []
                text = self._regex(item)
                if text:
                    parts.append(text)
            if run:
                parts.append(self.builder.literal("".join(run)))
            return " ".join(parts)
        if isinstance(node, Alt):
            return f"({' | '.join(self._regex(option) for option in node.options)})"
        if isinstance(node, Repeat):
            repeated: Node | None = node.node
            low = node.low
            if node.high is None and nullable(node.node):
                # llama.cpp refuses an unbounded repetition of what may be empty (left
                # recursion); the same strings are the non-empty ones repeated.
                repeated, low = nonempty(node.node), 0
            inner = self._regex(repeated) if repeated is not None else ""
            return repeat(atom(inner), low, node.high) if inner else ""
        raise PatternError("'^' and '$' are supported only at the start and the end")

    def _chars(self, ranges: Ranges) -> str:
        """The GBNF of one character of ``ranges`` inside a JSON string: raw, or escaped where
        JSON requires it."""
        raw = subtract(ranges, SPECIAL)
        parts = [char_class(raw)] if raw else []
        special = [
            chr(c) for first, last in intersect(ranges, SPECIAL) for c in range(first, last + 1)
        ]
        letters = [SHORT_ESCAPES[c][1] for c in special if c in SHORT_ESCAPES]
        if letters:
            parts.append(f'"\\\\" {char_class(codes(letters))}')
        controls = [ord(c) for c in special if c not in SHORT_ESCAPES]
        if controls:  # \u00XX, by the first hex digit
            by_high = [
                f'"{high}" {char_class(codes(f"{c & 0xF:x}" for c in controls if c >> 4 == high))}'
                for high in (0, 1)
                if any(c >> 4 == high for c in controls)
            ]
            parts.append(f'"\\\\u00" {group(by_high)}')
        if not parts:
            raise PatternError("a character class that matches no character")
        return parts[0] if len(parts) == 1 else self.builder.rule("chars", " | ".join(parts))
