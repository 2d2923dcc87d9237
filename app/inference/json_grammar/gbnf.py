"""GBNF text: the rules of one grammar, literals, character classes and repetitions, and the
shared rules of JSON values and string formats that schema rules are written with."""

from __future__ import annotations

import re

from app.inference.regex_subset import Ranges, complement
from app.inference.schema_limits import LIMITS, SchemaTooCostly

# Digits of an integer part or a fraction. Exponents get 2 digits: 1e999 is infinity to most
# parsers, and infinity is not JSON.
MAX_DIGITS = 15
_INTEGER = f'"-"? ("0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}})'
_NUMBER = f'{_INTEGER} ("." [0-9]{{1,{MAX_DIGITS}}})? ([eE] [-+]? [0-9]{{1,2}})?'

_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (body, rules it needs)
    "space": (r'| " " | "\n" [ \t]{0,20}', ()),
    # Raw characters except '"', '\' and U+0000-U+001F, or an escape. A \u escape of a surrogate
    # is left out: a lone one is not text, and a pair would count as two characters here but
    # one in minLength.
    "char": (
        r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CeEfF] [0-9a-fA-F]{3} | '
        r"[dD] [0-7] [0-9a-fA-F]{2}))",
        (),
    ),
    "string": (r'"\"" char* "\"" space', ("char", "space")),
    "integer": (f"{_INTEGER} space", ("space",)),
    "number": (f"{_NUMBER} space", ("space",)),
    "boolean": ('("true" | "false") space', ("space",)),
    "null": ('"null" space', ("space",)),
    "json-value": (
        "json-object | json-array | string | number | boolean | null",
        ("json-object", "json-array", "string", "number", "boolean", "null"),
    ),
    "json-object": (
        r'"{" space (json-member ("," space json-member)*)? "}" space',
        ("json-member", "space"),
    ),
    "json-member": ('string ":" space json-value', ("string", "json-value")),
    "json-array": (
        r'"[" space (json-value ("," space json-value)*)? "]" space',
        ("json-value", "space"),
    ),
    "year": (r'[1-9] [0-9]{3} | "0" ([1-9] [0-9]{2} | "0" ([1-9] [0-9] | "0" [1-9]))', ()),
    "leap-year": (
        r'[0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [48] | [2468] [048] | '
        r'[13579] [26]) "00"',
        (),
    ),
    # Day ranges per month, and 29 February only in leap years: validators check real dates.
    "date": (
        r'year "-" ("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | '
        r'year "-" ("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | '
        r'year "-02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]) | leap-year "-02-29"',
        ("year", "leap-year"),
    ),
    # RFC 3339 full-time, without leap seconds.
    "time": (
        r'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,9})? '
        r'("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
        (),
    ),
    "date-time": ('date "T" time', ("date", "time")),
    "uuid": (
        r'[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
        r"[0-9a-fA-F]{12}",
        (),
    ),
}
_RESERVED = frozenset({"root", *_PRIMITIVES})

# Code point sets are sorted tuples of inclusive (first, last) ranges.
SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def sanitize(name: str, limit: int = 24) -> str:
    # GBNF rule names are letters, digits and '-'; long ones only make the grammar longer.
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:limit].strip("-") or "x"


def seq(*parts: str) -> str:
    """GBNF items in sequence, leaving out empty ones."""
    return " ".join(part for part in parts if part)


def json_char(char: str) -> str:
    """``char`` as written inside a JSON string."""
    escaped = SHORT_ESCAPES.get(char)
    if escaped is not None:
        return escaped
    return f"\\u{ord(char):04x}" if ord(char) < 0x20 else char


def group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else f"({' | '.join(alternatives)})"


def repeat(item: str, low: int, high: int | None) -> str:
    """``item`` (an atom or a parenthesized group) from ``low`` to ``high`` times."""
    if high == 0:
        return ""
    if high is None:
        suffix = {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    elif low == high:
        suffix = "" if low == 1 else f"{{{low}}}"
    else:
        suffix = "?" if (low, high) == (0, 1) else f"{{{low},{high}}}"
    return item + suffix


_ATOM = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z0-9-]+')


def atom(expression: str) -> str:
    """``expression`` as one item that a quantifier can follow."""
    if _ATOM.fullmatch(expression) or _one_group(expression):
        return expression
    return f"({expression})"


def _one_group(expression: str) -> bool:
    """Whether ``expression`` is one parenthesized group (not "(a) (b)")."""
    if not expression.startswith("("):
        return False
    depth = 0
    for match in _GROUPING.finditer(expression):
        depth += {"(": 1, ")": -1}.get(match.group(), 0)
        if depth == 0:
            return match.end() == len(expression)
    return False


_GROUPING = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[()]')


class GbnfRules:
    """Collects GBNF rules for one grammar; shared primitives are defined once.

    Rules get the names their callers derive them from (made unique), and a rule whose text
    equals one already added is not added again: adding the same rules in the same order gives
    the same grammar.
    """

    def __init__(self) -> None:
        self._rules: dict[str, str | None] = {}  # None: reserved, defined later
        self._by_body: dict[str, str] = {}
        self._suffixes: dict[str, int] = {}
        self.defined_bytes = 0
        """The text of every rule defined so far (reached from the root or not)."""

    def rule(self, name: str, body: str) -> str:
        """Adds the GBNF rule ``body`` under a unique name derived from ``name`` and returns
        that name (or the name of an identical rule already added)."""
        existing = self._by_body.get(body)
        if existing is not None:
            return existing
        unique = self.reserve(name)
        self.define(unique, body)
        return unique

    @staticmethod
    def literal(text: str) -> str:
        """A GBNF string literal matching exactly ``text``."""
        out = ['"']
        for char in text:
            if char in ('"', "\\"):
                out.append("\\" + char)
            elif char in ("\n", "\r", "\t"):
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
            elif char.isprintable():
                out.append(char)
            else:
                out.append(_hex_escape(ord(char)))
        out.append('"')
        return "".join(out)

    def grammar(self, root: str, *, param: str = "response_format") -> str:
        """The whole GBNF text: ``root ::= <root>`` and every rule that it reaches; raises
        ``SchemaTooCostly`` (naming ``param``) when it is over ``max_grammar_bytes``."""
        reached: set[str] = set()
        pending = _references(root)
        while pending:
            name = pending.pop()
            if name in reached:
                continue
            body = self._rules.get(name)
            if body is None:
                raise ValueError(f"the grammar refers to an undefined rule {name!r}")
            reached.add(name)
            pending.extend(_references(body))
        lines = [f"root ::= {root}"]
        lines.extend(f"{name} ::= {body}" for name, body in self._rules.items() if name in reached)
        grammar = "\n".join(lines) + "\n"
        size = len(grammar.encode())
        if size > LIMITS.max_grammar_bytes:
            raise SchemaTooCostly(
                f"The JSON schema is too costly to enforce: its grammar would take {size} bytes, "
                f"at most {LIMITS.max_grammar_bytes} are allowed.",
                param=param,
            )
        return grammar

    def primitive(self, name: str) -> str:
        """Adds the shared rule ``name`` (one of the JSON and format primitives above) and the
        rules it needs; returns ``name``."""
        if name not in self._rules:
            body, needs = _PRIMITIVES[name]
            self._rules[name] = body
            self._by_body.setdefault(body, name)
            for need in needs:
                self.primitive(need)
        return name

    def reserve(self, name: str) -> str:
        """A unique rule name derived from ``name``, to be given its body by ``define``
        (a rule that refers to itself is named before it is written)."""
        base = sanitize(name, limit=80)
        unique = base
        if unique in self._rules or unique in _RESERVED:
            suffix = self._suffixes.get(base, 2)
            while f"{base}-{suffix}" in self._rules or f"{base}-{suffix}" in _RESERVED:
                suffix += 1
            self._suffixes[base] = suffix + 1
            unique = f"{base}-{suffix}"
        self._rules[unique] = None
        return unique

    def define(self, name: str, body: str) -> None:
        """Gives the rule ``name`` (from ``reserve``) its body."""
        self._rules[name] = body
        self.defined_bytes += len(name) + len(body) + 5
        self._by_body.setdefault(body, name)


def _hex_escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|([A-Za-z0-9-]+)')


def _references(body: str) -> list[str]:
    return [match.group(1) for match in _TOKENS.finditer(body) if match.group(1)]


def _class_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else _hex_escape(code)


def _class_items(ranges: Ranges) -> str:
    parts = []
    for first, last in ranges:
        if first == last:
            parts.append(_class_char(first))
        elif last == first + 1:
            parts.append(_class_char(first) + _class_char(last))
        else:
            parts.append(f"{_class_char(first)}-{_class_char(last)}")
    return "".join(parts)


def char_class(ranges: Ranges) -> str:
    """A GBNF class of the raw (unescaped) characters ``ranges``, the shorter way round."""
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return GbnfRules.literal(chr(ranges[0][0]))
    positive = f"[{_class_items(ranges)}]"
    negative = f"[^{_class_items(complement(ranges))}]"
    return negative if len(negative) < len(positive) else positive
