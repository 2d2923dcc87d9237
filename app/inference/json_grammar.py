"""JSON schemas to llama.cpp GBNF grammars, so that constrained output is JSON valid against them.

Clients send JSON schemas (``response_format`` of type ``json_schema``, tool ``parameters``); text
sampled under the grammar made here parses with any JSON parser and, once finished, matches the
schema. What a context-free grammar can enforce is enforced: types, ``enum``/``const``,
properties in order with required keys, extra keys, items and their counts, ``anyOf``/``oneOf``/
``allOf``, ``$ref`` (recursion included), string lengths, a subset of regular expressions, the
date, time, date-time and uuid formats, and integer bounds. Any other keyword that constrains
values raises ``UnsupportedSchema`` with ``strict``, or is named in ``unenforced`` without.

Strings never contain raw control characters, and numbers and whitespace are bounded, so that a
small model cannot emit invalid JSON or loop inside one number or one run of spaces.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

from app.errors import InvalidRequest
from app.inference.regex_subset import (
    SPECIAL,
    UNIVERSE,
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
    complement,
    contains,
    has_anchor,
    intersect,
    nonempty,
    norm,
    nullable,
    subtract,
)
from app.inference.schema_limits import LIMITS, SchemaTooCostly, check_schema_cost


class UnsupportedSchema(InvalidRequest):
    """A JSON schema that cannot become a grammar: a keyword it cannot enforce under
    ``strict: true``, a ``$ref`` that does not resolve, an invalid or unsatisfiable schema."""


class _Unsatisfiable(UnsupportedSchema):
    """No value satisfies a subschema; an ``anyOf`` branch or an optional property like that is
    dropped instead of failing the whole schema."""


# Digits of an integer part or a fraction. Exponents get 2 digits: 1e999 is infinity to most
# parsers, and infinity is not JSON.
_MAX_DIGITS = 15
_INTEGER = f'"-"? ("0" | [1-9] [0-9]{{0,{_MAX_DIGITS - 1}}})'
_NUMBER = f'{_INTEGER} ("." [0-9]{{1,{_MAX_DIGITS}}})? ([eE] [-+]? [0-9]{{1,2}})?'
# Subschemas inside subschemas (``$ref`` and ``allOf`` expansions included) before Python's stack
# would run out; check_schema_cost allows far less nesting.
_MAX_NESTING = 100
# Characters of declared keys that an extra key may share before it must differ.
_KEY_DEPTH = 16

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
# The shortest and longest text of each format, to tell whether minLength/maxLength hold anyway.
_FORMAT_LENGTHS = {"date": (10, 10), "time": (9, 24), "date-time": (20, 35), "uuid": (36, 36)}

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "examples",
        "example",
        "default",
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "$defs",
        "definitions",
        "$vocabulary",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "discriminator",
        "xml",
        "externalDocs",
    }
)
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
# The keywords that constrain only values of one type, by that type.
_FAMILIES: dict[str, frozenset[str]] = {
    "object": frozenset(
        {
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "propertyNames",
            "minProperties",
            "maxProperties",
            "dependentRequired",
            "dependentSchemas",
            "dependencies",
            "unevaluatedProperties",
        }
    ),
    "array": frozenset(
        {
            "items",
            "prefixItems",
            "additionalItems",
            "minItems",
            "maxItems",
            "uniqueItems",
            "contains",
            "minContains",
            "maxContains",
            "unevaluatedItems",
        }
    ),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
}
_ANY_UNSUPPORTED = ("not", "if", "$dynamicRef", "$recursiveRef")
_OBJECT_UNSUPPORTED = (
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
)
_ARRAY_UNSUPPORTED = ("uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems")
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_ARTICLES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "null": "null",
}
_LOWER_BOUNDS = frozenset(
    {"minLength", "minItems", "minProperties", "minContains", "minimum", "exclusiveMinimum"}
)
_UPPER_BOUNDS = frozenset(
    {"maxLength", "maxItems", "maxProperties", "maxContains", "maximum", "exclusiveMaximum"}
)
_INT_FORMATS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

# Code point sets are sorted tuples of inclusive (first, last) ranges.
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_Key = tuple[str, str]


@dataclass(frozen=True)
class _At:
    """Where a subschema is: ``path`` for messages, ``name`` for its rules, and ``left``, the
    ``$ref``s met before the first token of the rule being expanded (None once a token has
    been written), to tell recursion that a grammar cannot express."""

    path: str
    name: str
    left: set[_Key] | None

    def child(self, path: str, name: str, *, guarded: bool = False) -> _At:
        return _At(
            self.path + path, f"{self.name}-{_sanitize(name)}", None if guarded else self.left
        )


def _sanitize(name: str, limit: int = 24) -> str:
    # GBNF rule names are letters, digits and '-'; long ones only make the grammar longer.
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:limit].strip("-") or "x"


def _seq(*parts: str) -> str:
    """GBNF items in sequence, leaving out empty ones."""
    return " ".join(part for part in parts if part)


def _path_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", key):
        return f".{key}"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_char(char: str) -> str:
    """``char`` as written inside a JSON string."""
    escaped = _SHORT_ESCAPES.get(char)
    if escaped is not None:
        return escaped
    return f"\\u{ord(char):04x}" if ord(char) < 0x20 else char


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else f"({' | '.join(alternatives)})"


def _repeat(item: str, low: int, high: int | None) -> str:
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


def _atom(expression: str) -> str:
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


def _digits(count: int) -> str:
    return "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


def _lead(head: str, first: int, last: int) -> str:
    """The digits ``head`` then one digit from ``first`` to ``last``."""
    if first == last:
        return f'"{head}{first}"'
    return f'"{head}" [{first}-{last}]' if head else f"[{first}-{last}]"


def _same_width(low: str, high: str) -> list[str]:
    """Alternatives matching the digit strings from ``low`` to ``high``, both of one width."""
    if low == high:
        return [f'"{low}"']
    common = 0
    while low[common] == high[common]:
        common += 1
    head = low[:common]
    rest = len(low) - common - 1
    first, last = int(low[common]), int(high[common])
    if rest == 0:
        return [_lead(head, first, last)]
    out: list[str] = []
    if low[common + 1 :] != "0" * rest:
        inner = _group(_same_width(low[common + 1 :], "9" * rest))
        out.append(_cat(f'"{head}{first}"', inner))
        first += 1
    upper = None
    if high[common + 1 :] != "9" * rest:
        inner = _group(_same_width("0" * rest, high[common + 1 :]))
        upper = _cat(f'"{head}{last}"', inner)
        last -= 1
    if first <= last:
        out.append(f"{_lead(head, first, last)} {_digits(rest)}")
    if upper is not None:
        out.append(upper)
    return out


def _cat(literal: str, rest: str) -> str:
    """``literal`` (of digits) then ``rest``, as one literal where ``rest`` is one too."""
    if re.fullmatch(r'"[0-9]*"', rest):
        return literal[:-1] + rest[1:]
    return f"{literal} {rest}"


def _positive(low: int, high: int | None) -> list[str]:
    """Alternatives matching the integers from ``low`` (at least 1) to ``high`` (None: to
    ``_MAX_DIGITS`` digits, or as many as ``low`` has)."""
    width = len(str(low))
    if high is None:
        out = _same_width(str(low), "9" * width)
        longest = max(_MAX_DIGITS, width)
        if longest > width:
            out.append(f"[1-9] [0-9]{{{width},{longest - 1}}}")
        return out
    out = []
    for digits in range(width, len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1))
        last = min(high, 10**digits - 1)
        out.extend(_same_width(str(first), str(last)))
    return out


def _int_range(low: int | None, high: int | None) -> list[str]:
    """Alternatives matching the JSON integers from ``low`` to ``high`` (None: unbounded)."""
    out: list[str] = []
    if low is None or low < 0:
        magnitudes = _positive(
            1 if high is None or high >= 0 else -high, None if low is None else -low
        )
        out.append(f'"-" {_group(magnitudes)}')
    if (low is None or low <= 0) and (high is None or high >= 0):
        out.append('"0"')
    if high is None or high > 0:
        out.extend(_positive(1 if low is None or low < 1 else low, high))
    return out


class GrammarBuilder:
    """Collects GBNF rules for one grammar; shared primitives are defined once.

    Rules are named after where their subschema is, and a rule whose text equals one already
    added is not added again: converting the same schemas in the same order gives the same
    grammar.
    """

    def __init__(self) -> None:
        self._rules: dict[str, str | None] = {}  # None: reserved, defined later
        self._by_body: dict[str, str] = {}
        self._suffixes: dict[str, int] = {}
        self._unenforced: set[str] = set()
        self._patterns: dict[str, str | PatternError] = {}

    def value(self, schema: Any, *, strict: bool, param: str, name: str = "value") -> str:
        """Adds the rules for a JSON value valid against ``schema``; returns the rule name to use
        in other rules.

        Args:
            schema: A JSON schema (a dict or a boolean), first measured by
                ``check_schema_cost``.
            strict: Whether a constraint keyword the grammar cannot enforce raises
                ``UnsupportedSchema``; without, it is not enforced and named in ``unenforced``.
            param: The request field the schema came from, for errors
                (e.g. ``tools[0].function.parameters``).
            name: What the rules of this value are named after.

        Raises:
            SchemaTooCostly: The schema is beyond ``check_schema_cost``'s limits.
            UnsupportedSchema: A keyword not enforceable under ``strict``, a ``$ref`` that does
                not resolve, an invalid schema, or one that no value satisfies.
        """
        check_schema_cost(schema, param)
        try:
            return _Converter(self, schema, strict=strict, param=param).root(_sanitize(name, 80))
        except RecursionError:
            raise SchemaTooCostly(
                "The JSON schema is too costly to enforce: it nests too deeply.", param=param
            ) from None

    def rule(self, name: str, body: str) -> str:
        """Adds the GBNF rule ``body`` under a unique name derived from ``name`` and returns
        that name (or the name of an identical rule already added)."""
        existing = self._by_body.get(body)
        if existing is not None:
            return existing
        unique = self._reserve(name)
        self._define(unique, body)
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

    @property
    def unenforced(self) -> list[str]:
        """The keywords (sorted, each once) that were not enforced because ``strict`` was off."""
        return sorted(self._unenforced)

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

    def _primitive(self, name: str) -> str:
        if name not in self._rules:
            body, needs = _PRIMITIVES[name]
            self._rules[name] = body
            self._by_body.setdefault(body, name)
            for need in needs:
                self._primitive(need)
        return name

    def _reserve(self, name: str) -> str:
        base = _sanitize(name, limit=80)
        unique = base
        if unique in self._rules or unique in _RESERVED:
            suffix = self._suffixes.get(base, 2)
            while f"{base}-{suffix}" in self._rules or f"{base}-{suffix}" in _RESERVED:
                suffix += 1
            self._suffixes[base] = suffix + 1
            unique = f"{base}-{suffix}"
        self._rules[unique] = None
        return unique

    def _define(self, name: str, body: str) -> None:
        self._rules[name] = body
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


def _class(ranges: Ranges) -> str:
    """A GBNF class of the raw (unescaped) characters ``ranges``, the shorter way round."""
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return GrammarBuilder.literal(chr(ranges[0][0]))
    positive = f"[{_class_items(ranges)}]"
    negative = f"[^{_class_items(complement(ranges))}]"
    return negative if len(negative) < len(positive) else positive


class _Converter:
    """Turns one schema document into rules of a builder."""

    def __init__(self, builder: GrammarBuilder, document: Any, *, strict: bool, param: str) -> None:
        self.builder = builder
        self.document = document
        self.strict = strict
        self.param = param
        self._pending: set[_Key] = set()
        self._placeholders: dict[_Key, str] = {}
        self._done: dict[_Key, str] = {}
        self._edges: dict[_Key, frozenset[_Key]] = {}
        self._depth = 0

    # Errors

    def _cannot(self, keyword: str, what: str, path: str, why: str = "") -> None:
        if self.strict:
            detail = f": {why}" if why else ""
            raise UnsupportedSchema(
                f"'{keyword}' on {what} at {path} is not supported with strict: true{detail}",
                param=self.param,
            )
        self.builder._unenforced.add(keyword)

    def _invalid(self, path: str, why: str) -> UnsupportedSchema:
        return UnsupportedSchema(f"The schema at {path} is invalid: {why}.", param=self.param)

    def _unsatisfiable(self, path: str, why: str) -> _Unsatisfiable:
        return _Unsatisfiable(
            f"No value can satisfy the schema at {path}: {why}.", param=self.param
        )

    # Schemas

    def root(self, name: str) -> str:
        at = _At("$", name, None)
        return self._expand(("#", ""), self.document, None, at)

    def convert(self, schema: Any, at: _At) -> str:
        self._depth += 1
        try:
            if self._depth > _MAX_NESTING:
                raise SchemaTooCostly(
                    "The JSON schema is too costly to enforce: it nests too deeply.",
                    param=self.param,
                )
            if schema is True:
                return self.builder._primitive("json-value")
            if schema is False:
                raise self._unsatisfiable(at.path, "it is false")
            if not isinstance(schema, dict):
                raise self._invalid(
                    at.path, f"a schema must be an object or a boolean, not {_dump_type(schema)}"
                )
            if "$ref" in schema:
                return self._ref(schema, at)
            if "allOf" in schema:
                schema = self._merge_all(schema, at)
            return self._plain(schema, at)
        finally:
            self._depth -= 1

    def _expand(self, key: _Key, target: Any, siblings: dict[str, Any] | None, at: _At) -> str:
        """The rule of a ``$ref`` target (with ``siblings`` merged in), expanded once however
        often it is referred to; a reference from inside its own expansion gets a rule name
        that is defined when the expansion is done."""
        if at.left is not None:
            at.left.add(key)
        if key in self._done:
            return self._done[key]
        if key in self._pending:
            if key not in self._placeholders:
                self._placeholders[key] = self.builder._reserve(at.name)
            return self._placeholders[key]
        self._pending.add(key)
        left: set[_Key] = set()
        inner = _At(at.path, at.name, left)
        try:
            schema = target if not siblings else {"allOf": [target, siblings]}
            result = self.convert(schema, inner)
        finally:
            self._pending.discard(key)
            placeholder = self._placeholders.pop(key, None)
        self._edges[key] = frozenset(left)
        if self._refers_to_itself(key):
            raise UnsupportedSchema(
                f"The schema at {at.path} refers to itself through '$ref' before any JSON "
                "token, which a grammar cannot express.",
                param=self.param,
            )
        if placeholder is not None:
            self.builder._define(placeholder, result)
            result = placeholder
        self._done[key] = result
        return result

    def _refers_to_itself(self, key: _Key) -> bool:
        seen: set[_Key] = set()
        stack = list(self._edges.get(key, ()))
        while stack:
            current = stack.pop()
            if current == key:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(self._edges.get(current, ()))
        return False

    def _resolve(self, ref: Any, path: str) -> tuple[Any, str]:
        if not isinstance(ref, str):
            raise self._invalid(path, "'$ref' must be a string")
        fail = UnsupportedSchema(
            f"The '$ref' {ref!r} at {path} does not resolve to a schema in this document.",
            param=self.param,
        )
        if not ref.startswith("#") or (len(ref) > 1 and ref[1] != "/"):
            raise fail
        node, where = self.document, "$"
        if len(ref) > 1:
            for raw in ref[2:].split("/"):
                part = unquote(raw).replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node, where = node[part], where + _path_key(part)
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node, where = node[int(part)], f"{where}[{part}]"
                else:
                    raise fail
        if not isinstance(node, dict | bool):
            raise fail
        return node, where

    def _ref(self, schema: dict[str, Any], at: _At) -> str:
        ref = schema["$ref"]
        target, where = self._resolve(ref, at.path)
        siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
        if siblings:
            # The target and this site's own keywords together: a rule of its own.
            return self._expand((ref, _dump_key(siblings)), target, siblings, at)
        name = _sanitize(ref.rsplit("/", 1)[-1]) if ref != "#" else at.name
        return self._expand((ref, ""), target, None, _At(where, name, at.left))

    def _plain(self, schema: dict[str, Any], at: _At) -> str:
        what = _what(schema)
        for keyword in _ANY_UNSUPPORTED:
            if keyword in schema and (keyword != "if" or "then" in schema or "else" in schema):
                self._cannot(keyword, what, at.path)
        nullable = schema.get("nullable") is True
        if "anyOf" in schema or "oneOf" in schema:
            return self._any_of(schema, at, nullable)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, at, nullable)
        types = self._types(schema, at)
        if types is None:
            return self.builder._primitive("json-value")
        names = []
        for type_ in types:
            typed_at = at if len(types) == 1 else _At(at.path, f"{at.name}-{type_}", at.left)
            try:
                names.append(self._typed(type_, schema, typed_at))
            except _Unsatisfiable:
                if len(types) == 1:
                    raise
        if not names:
            raise self._unsatisfiable(at.path, "no type in 'type' can be satisfied")
        return self._alternatives(names, at)

    def _alternatives(self, names: list[str], at: _At) -> str:
        unique = list(dict.fromkeys(names))
        return unique[0] if len(unique) == 1 else self.builder.rule(at.name, " | ".join(unique))

    def _types(self, schema: dict[str, Any], at: _At) -> list[str] | None:
        """The types to write for ``schema``: its ``type``, or the types whose keywords it has
        (a subset of what it allows, always valid), or None for any value."""
        declared = schema.get("type")
        types: list[str]
        if declared is None:
            types = [t for t, keywords in _FAMILIES.items() if not keywords.isdisjoint(schema)]
            if not types:
                return None
        elif isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
            types = list(dict.fromkeys(declared))
        else:
            raise self._invalid(at.path, "'type' must be a type name or a list of them")
        for type_ in types:
            if type_ not in _TYPES:
                raise self._invalid(at.path, f"{type_!r} is not a JSON schema type")
        if "number" in types and "integer" in types:
            types.remove("integer")  # numbers include integers
        if schema.get("nullable") is True and "null" not in types:
            types.append("null")
        return types

    def _typed(self, type_: str, schema: dict[str, Any], at: _At) -> str:
        if type_ == "object":
            return self._object(schema, at)
        if type_ == "array":
            return self._array(schema, at)
        if type_ == "string":
            return self._string(schema, at)
        if type_ == "integer":
            return self._integer(schema, at)
        if type_ == "number":
            for keyword in _NUMBER_BOUNDS:
                if keyword in schema:
                    self._cannot(keyword, "a number", at.path)
            if schema.get("format", "float") not in ("float", "double"):
                self._cannot("format", "a number", at.path, f"the format {schema['format']!r}")
            return self.builder._primitive("number")
        return self.builder._primitive(type_)

    def _any_of(self, schema: dict[str, Any], at: _At, nullable: bool) -> str:
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        if keyword == "anyOf" and "oneOf" in schema:
            self._cannot("oneOf", "a schema with 'anyOf'", at.path)
        branches = schema[keyword]
        if not isinstance(branches, list) or not branches:
            raise self._invalid(at.path, f"'{keyword}' must be a non-empty list")
        siblings = {
            k: v
            for k, v in schema.items()
            if k not in ("anyOf", "oneOf", "nullable", *_ANY_UNSUPPORTED) and k not in _ANNOTATIONS
        }
        names = []
        for index, branch in enumerate(branches):
            child = at.child(f".{keyword}[{index}]", str(index))
            try:
                names.append(self.convert(_combine(branch, siblings), child))
            except _Unsatisfiable:
                continue
        if nullable:
            names.append(self.builder._primitive("null"))
        if not names:
            raise self._unsatisfiable(at.path, f"no branch of '{keyword}' can be satisfied")
        return self._alternatives(names, at)

    def _enum(self, schema: dict[str, Any], at: _At, nullable: bool) -> str:
        values: list[Any] = [schema["const"]] if "const" in schema else []
        if "enum" in schema:
            enum = schema["enum"]
            if not isinstance(enum, list):
                raise self._invalid(at.path, "'enum' must be a list")
            if "const" in schema:
                listed = {_dump_key(v) for v in enum}
                values = [v for v in values if _dump_key(v) in listed]
            else:
                values = list(enum)
        declared = self._types({"type": schema["type"]}, at) if "type" in schema else None
        kept: list[str] = []
        for value in values:
            kinds = _kinds(value)
            if declared is not None and kinds.isdisjoint(declared):
                continue
            if self._fits(value, kinds, schema, at):
                try:
                    kept.append(self.builder.literal(_dump(value)))
                except (TypeError, ValueError):
                    raise self._invalid(at.path, "an 'enum' value is not JSON") from None
        if nullable:
            kept.append(self.builder.literal("null"))
        if not kept:
            raise self._unsatisfiable(at.path, "no value of 'enum' or 'const' fits the schema")
        body = f"{_group(list(dict.fromkeys(kept)))} space"
        self.builder._primitive("space")
        return self.builder.rule(at.name, body)

    def _fits(self, value: Any, kinds: frozenset[str], schema: dict[str, Any], at: _At) -> bool:
        """Whether an enum ``value`` meets the other keywords of ``schema`` that apply to it."""
        for keyword, bound in schema.items():
            family = next((f for f, words in _FAMILIES.items() if keyword in words), None)
            if family is None or family not in kinds:
                continue
            if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
                count = self._count(schema, keyword, at) or 0
                if (len(value) < count) if keyword.startswith("min") else (len(value) > count):
                    return False
            elif keyword in _NUMBER_BOUNDS and _is_number(bound) and not isinstance(value, bool):
                if not _number_fits(keyword, bound, value):
                    return False
            elif keyword == "required" and isinstance(bound, list):
                if any(k not in value for k in bound):
                    return False
            else:
                self._cannot(keyword, f"{_ARTICLES[family]} with 'enum'", at.path)
        return True

    # Strings

    def _string(self, schema: dict[str, Any], at: _At) -> str:
        low = self._count(schema, "minLength", at) or 0
        high = self._count(schema, "maxLength", at)
        if high is not None and high < low:
            raise self._unsatisfiable(at.path, "'minLength' is above 'maxLength'")
        content: str | None = None
        lengths: tuple[int, int] | None = None
        format_ = schema.get("format")
        if format_ is not None:
            if isinstance(format_, str) and format_ in _FORMAT_LENGTHS:
                content = self.builder._primitive(format_)
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
            self.builder._primitive("char")
            if (low, high) == (0, None):
                return self.builder._primitive("string")
            content = _repeat("char", low, high)
        self.builder._primitive("space")
        return self.builder.rule(at.name, f'"\\"" {content} "\\"" space')

    def _pattern(self, pattern: str) -> str:
        """The GBNF of a JSON string's content (without the quotes) that matches ``pattern``
        as JSON Schema reads it: unanchored unless it starts with ``^`` or ends with ``$``."""
        cached = self.builder._patterns.get(pattern)
        if cached is None:
            try:
                cached = self._pattern_uncached(pattern)
            except PatternError as exc:
                cached = exc
            self.builder._patterns[pattern] = cached
        if isinstance(cached, PatternError):
            raise cached
        self.builder._primitive("char")
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
                    run.append(_json_char(chr(item.lo[0][0])))
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
            return _repeat(_atom(inner), low, node.high) if inner else ""
        raise PatternError("'^' and '$' are supported only at the start and the end")

    def _chars(self, ranges: Ranges) -> str:
        """The GBNF of one character of ``ranges`` inside a JSON string: raw, or escaped where
        JSON requires it."""
        raw = subtract(ranges, SPECIAL)
        parts = [_class(raw)] if raw else []
        special = [
            chr(c) for first, last in intersect(ranges, SPECIAL) for c in range(first, last + 1)
        ]
        letters = [_SHORT_ESCAPES[c][1] for c in special if c in _SHORT_ESCAPES]
        if letters:
            parts.append(f'"\\\\" {_class(codes(letters))}')
        controls = [ord(c) for c in special if c not in _SHORT_ESCAPES]
        if controls:  # \u00XX, by the first hex digit
            by_high = [
                f'"{high}" {_class(codes(f"{c & 0xF:x}" for c in controls if c >> 4 == high))}'
                for high in (0, 1)
                if any(c >> 4 == high for c in controls)
            ]
            parts.append(f'"\\\\u00" {_group(by_high)}')
        if not parts:
            raise PatternError("a character class that matches no character")
        return parts[0] if len(parts) == 1 else self.builder.rule("chars", " | ".join(parts))

    # Numbers

    def _integer(self, schema: dict[str, Any], at: _At) -> str:
        low: int | None = None
        high: int | None = None
        minimum, maximum = self._bound(schema, "minimum", at), self._bound(schema, "maximum", at)
        if minimum is not None:
            low = math.ceil(minimum)
        if maximum is not None:
            high = math.floor(maximum)
        for keyword, is_low in (("exclusiveMinimum", True), ("exclusiveMaximum", False)):
            value = schema.get(keyword)
            if isinstance(value, bool):  # draft 4: a flag on minimum/maximum
                bound = minimum if is_low else maximum
                if value and bound is not None:
                    if is_low:
                        low = math.floor(bound) + 1
                    else:
                        high = math.ceil(bound) - 1
            elif (exclusive := self._bound(schema, keyword, at)) is not None:
                if is_low:
                    candidate = math.floor(exclusive) + 1
                    low = candidate if low is None else max(low, candidate)
                else:
                    candidate = math.ceil(exclusive) - 1
                    high = candidate if high is None else min(high, candidate)
        step = self._bound(schema, "multipleOf", at)
        if step is not None and (step <= 0 or (1 / Fraction(str(step))).denominator != 1):
            # Only a step that divides 1 holds for every integer.
            self._cannot("multipleOf", "an integer", at.path)
        format_ = schema.get("format")
        if format_ in _INT_FORMATS:
            first, last = _INT_FORMATS[format_]
            if format_ == "int32" or low is not None:
                low = max(low, first) if low is not None else first
            if format_ == "int32" or high is not None:
                high = min(high, last) if high is not None else last
        elif format_ is not None:
            self._cannot("format", "an integer", at.path, f"the format {format_!r}")
        if low is None and high is None:
            return self.builder._primitive("integer")
        if low is not None and high is not None and low > high:
            raise self._unsatisfiable(at.path, "no integer lies within its bounds")
        self.builder._primitive("space")
        return self.builder.rule(at.name, f"{_group(_int_range(low, high))} space")

    def _bound(self, schema: dict[str, Any], keyword: str, at: _At) -> float | None:
        value = schema.get(keyword)
        if value is None:
            return None
        if not _is_number(value):
            raise self._invalid(at.path, f"'{keyword}' must be a number")
        return float(value) if isinstance(value, float) else value

    def _count(self, schema: dict[str, Any], keyword: str, at: _At) -> int | None:
        value = schema.get(keyword)
        if value is None:
            return None
        if not _is_number(value) or value < 0 or value != int(value):
            raise self._invalid(at.path, f"'{keyword}' must be a non-negative integer")
        return int(value)

    # Objects

    def _object(self, schema: dict[str, Any], at: _At) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        # Absent, additionalProperties allows any other key. The grammar then allows none
        # beyond the declared ones (as llama.cpp does): what it writes is still valid, and a
        # small model otherwise wanders off writing made-up keys until max_tokens.
        undeclared = (
            isinstance(properties, dict)
            and isinstance(required, list)
            and any(key not in properties for key in required)
        )
        extra = schema.get("additionalProperties", not properties or undeclared)
        if not isinstance(properties, dict):
            raise self._invalid(at.path, "'properties' must be an object")
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            raise self._invalid(at.path, "'required' must be a list of strings")
        if not isinstance(extra, dict | bool):
            raise self._invalid(at.path, "'additionalProperties' must be a schema")
        for keyword in _OBJECT_UNSUPPORTED:
            if keyword in schema and not (keyword == "minProperties" and schema[keyword] == 0):
                self._cannot(keyword, "an object", at.path)
        if not properties and not required and extra is True:
            return self.builder._primitive("json-object")
        needed = dict.fromkeys(required)
        members: list[tuple[str, bool]] = []  # (GBNF of "key": value, required)
        declared: list[str] = []
        for key, subschema in properties.items():
            declared.append(key)
            child = at.child(f".properties{_path_key(key)}", key, guarded=True)
            try:
                value = self.convert(subschema, child)
            except _Unsatisfiable:
                if key in needed and subschema is False:
                    raise self._unsatisfiable(
                        at.path, f"the required key {key!r} cannot be present"
                    ) from None
                if key in needed:
                    raise
                continue  # never present
            members.append(
                (f"{self.builder.literal(_dump(key) + ':')} space {value}", key in needed)
            )
        extra_value: str | None = None
        if extra is not False:
            try:
                extra_value = self.convert(
                    extra, at.child(".additionalProperties", "additional", guarded=True)
                )
            except _Unsatisfiable:
                extra_value = None
        for key in needed:
            if key not in properties:
                if extra_value is None:
                    raise self._unsatisfiable(
                        at.path, f"the required key {key!r} cannot be present"
                    )
                declared.append(key)
                members.append(
                    (f"{self.builder.literal(_dump(key) + ':')} space {extra_value}", True)
                )
        self.builder._primitive("space")
        extra_member = None
        if extra_value is not None:
            key = self._key_except(declared, at) if declared else self.builder._primitive("string")
            extra_member = f'{key} ":" space {extra_value}'
        members_text = self._members(members, extra_member, at)
        return self.builder.rule(at.name, _seq('"{" space', members_text, '"}" space'))

    def _members(self, members: list[tuple[str, bool]], extra: str | None, at: _At) -> str:
        """The GBNF between the braces: members in order, required ones always, optional ones
        each present or not, then any extra members. Written as a chain of rules, one pair per
        leading optional member, so that the text grows linearly with the members."""
        first_required = next((i for i, (_, needed) in enumerate(members) if needed), len(members))

        def after(start: int) -> str:
            # Members from ``start`` on, once one has been written (each after a comma).
            parts = [
                f'"," space {member}' if needed else f'("," space {member})?'
                for member, needed in members[start:]
            ]
            if extra is not None:
                parts.append(f'("," space {extra})*')
            return " ".join(parts)

        if first_required < len(members):
            start = _seq(members[first_required][0], after(first_required + 1))
        elif extra is not None:
            start = f'({extra} ("," space {extra})*)?'
        else:
            start = ""
        if first_required == 0:
            return start
        # Rest(i): members from i on after one was written; From(i): from i on, none written.
        rest = after(first_required)
        rest_name = self.builder.rule(f"{at.name}-rest", rest) if rest else ""
        from_text = start
        for index in range(first_required - 1, -1, -1):
            member = members[index][0]
            choice = _seq(member, rest_name)
            from_text = f"{choice} | {from_text}" if from_text else f"({choice})?"
            if index == 0:
                break
            from_name = self.builder.rule(f"{at.name}-from", from_text)
            rest_text = _seq(f'("," space {member})?', rest_name)
            rest_name = self.builder.rule(f"{at.name}-rest", rest_text)
            from_text = from_name
        return _atom(from_text)

    def _key_except(self, keys: list[str], at: _At) -> str:
        """A JSON string (quoted) that is none of ``keys``: a duplicate key would override a
        declared property's value with one its schema does not allow.

        One rule per node of the keys' trie, down to ``_KEY_DEPTH`` characters: a key that
        shares more than that with a declared one is refused too, which keeps the grammar
        small. Where a key may still be spelt, characters have one spelling only (no \\u
        escapes), so that each key has one spelling to exclude.
        """
        tail = self.builder.rule("key-tail", 'char* "\\""')
        self.builder._primitive("char")
        trie: dict[str, Any] = {}
        for key in keys:
            node = trie
            for char in key[: _KEY_DEPTH + 1]:
                node = node.setdefault(char, {})
            if len(key) <= _KEY_DEPTH:
                node[""] = {}  # a key ends here
        order: list[tuple[dict[str, Any], int]] = []
        stack = [(trie, 0)]
        while stack:
            node, depth = stack.pop()
            order.append((node, depth))
            if depth < _KEY_DEPTH:
                stack.extend((child, depth + 1) for char, child in node.items() if char)
        names: dict[int, str] = {}
        for node, depth in reversed(order):  # children before their parents
            children = {
                c: child
                for c, child in node.items()
                if c and (c in _SHORT_ESCAPES or not contains(SPECIAL, ord(c)))
            }
            options = [] if "" in node else ['"\\""']
            options.append(self._key_other(children, tail))
            if depth < _KEY_DEPTH:
                options.extend(
                    f"{self.builder.literal(_json_char(c))} {names[id(child)]}"
                    for c, child in sorted(children.items())
                )
            names[id(node)] = self.builder.rule(
                f"{at.name}-key" if node is trie else "key", " | ".join(options)
            )
        return f'"\\"" {names[id(trie)]}'

    def _key_other(self, taken: Iterable[str], tail: str) -> str:
        """A rule: a key character other than ``taken``, then the rest of the key."""
        raw = subtract(UNIVERSE, norm([*SPECIAL, *codes(taken)]))
        options = [f"{_class(raw)} {tail}"]
        letters = [e[1] for c, e in _SHORT_ESCAPES.items() if c not in taken]
        if letters:
            options.append(f'"\\\\" {_class(codes(letters))} {tail}')
        return self.builder.rule("key-other", " | ".join(options))

    # Arrays

    def _array(self, schema: dict[str, Any], at: _At) -> str:
        items = schema.get("items")
        prefix: Any
        if isinstance(items, list):  # the old form of prefixItems
            prefix, rest = items, schema.get("additionalItems", True)
        else:
            prefix, rest = schema.get("prefixItems", []), True if items is None else items
        if not isinstance(prefix, list):
            raise self._invalid(at.path, "'prefixItems' must be a list")
        for keyword in _ARRAY_UNSUPPORTED:
            if keyword in schema and not (keyword == "uniqueItems" and schema[keyword] is False):
                self._cannot(keyword, "an array", at.path)
        low = self._count(schema, "minItems", at) or 0
        high = self._count(schema, "maxItems", at)
        item_names: list[str] = []
        for index, subschema in enumerate(prefix):
            if high is not None and index >= high:
                break
            child = at.child(f".prefixItems[{index}]", f"item-{index}", guarded=True)
            try:
                item_names.append(self.convert(subschema, child))
            except _Unsatisfiable:
                high = index  # no item can be at this position, nor any after it
                break
        rest_name: str | None = None
        if len(item_names) == len(prefix) and (high is None or high > len(prefix)):
            try:
                rest_name = self.convert(rest, at.child(".items", "item", guarded=True))
            except _Unsatisfiable:
                rest_name = None
            if rest_name is None:
                high = len(prefix)
        if high is not None and high < low:
            raise self._unsatisfiable(at.path, "it cannot have 'minItems' items")
        self.builder._primitive("space")
        count = len(item_names)
        tail = ""
        if rest_name is not None:
            more = None if high is None else high - count
            tail = _repeat(f'("," space {rest_name})', max(low - count, 0), more)
        for index in range(count - 1, 0, -1):
            step = _seq('"," space', item_names[index], tail)
            tail = step if index < low else f"({step})?"
        if count:
            elements = _seq(item_names[0], tail)
        elif rest_name is not None:
            more = None if high is None else high - 1
            following = _repeat(f'("," space {rest_name})', max(low - 1, 0), more)
            elements = _seq(rest_name, following)
        else:
            elements = ""
        if elements and low == 0:
            elements = f"({elements})?"
        return self.builder.rule(at.name, _seq('"[" space', elements, '"]" space'))

    # allOf

    def _merge_all(self, schema: dict[str, Any], at: _At) -> dict[str, Any]:
        parts = self._flatten(schema, at.path, frozenset())
        merged: dict[str, Any] = {}
        for part in parts:
            merged = self._merge(merged, part, at)
        return merged

    def _flatten(self, schema: Any, path: str, seen: frozenset[str]) -> list[dict[str, Any]]:
        """The schemas that ``schema`` is the conjunction of, ``$ref``s and ``allOf``s
        resolved, each without annotations."""
        if schema is True:
            return []
        if schema is False:
            raise self._unsatisfiable(path, "it is false")
        if not isinstance(schema, dict):
            raise self._invalid(
                path, f"a schema must be an object or a boolean, not {_dump_type(schema)}"
            )
        parts: list[dict[str, Any]] = []
        if "$ref" in schema:
            ref = schema["$ref"]
            target, where = self._resolve(ref, path)
            if ref in seen:
                raise UnsupportedSchema(
                    f"The schema at {path} refers to itself through 'allOf', which a grammar "
                    "cannot express.",
                    param=self.param,
                )
            parts.extend(self._flatten(target, where, seen | {ref}))
        if "allOf" in schema:
            entries = schema["allOf"]
            if not isinstance(entries, list) or not entries:
                raise self._invalid(path, "'allOf' must be a non-empty list")
            for index, entry in enumerate(entries):
                parts.extend(self._flatten(entry, f"{path}.allOf[{index}]", seen))
        own = {
            k: v for k, v in schema.items() if k not in ("$ref", "allOf") and k not in _ANNOTATIONS
        }
        if isinstance(own.get("items"), list):  # the old form of prefixItems
            own["prefixItems"] = own.pop("items")
            if "additionalItems" in own:
                own["items"] = own.pop("additionalItems")
        if "const" in own:  # as an enum, which merges by intersection
            const = own.pop("const")
            enum = own.get("enum")
            listed = [const] if not isinstance(enum, list) else enum
            own["enum"] = [v for v in listed if _dump_key(v) == _dump_key(const)]
        if own:
            parts.append(own)
        return parts

    def _merge(self, a: dict[str, Any], b: dict[str, Any], at: _At) -> dict[str, Any]:
        """One schema that allows what both allow, or (where the two cannot be merged) one
        that allows what ``a`` allows, after ``_cannot``."""
        out = dict(a)
        for keyword, value in b.items():
            if keyword not in out:
                out[keyword] = value
                continue
            mine = out[keyword]
            if keyword == "type":
                out[keyword] = self._merge_types(mine, value, at)
            elif keyword == "required" and isinstance(mine, list) and isinstance(value, list):
                out[keyword] = list(dict.fromkeys([*mine, *value]))
            elif keyword == "enum" and isinstance(mine, list) and isinstance(value, list):
                allowed = {_dump_key(v) for v in value}
                out[keyword] = [v for v in mine if _dump_key(v) in allowed]
            elif keyword == "additionalProperties":
                out[keyword] = _both(mine, value)
            elif keyword == "nullable":
                out[keyword] = mine is True and value is True
            elif keyword in _LOWER_BOUNDS and _is_number(mine) and _is_number(value):
                out[keyword] = max(mine, value)
            elif keyword in _UPPER_BOUNDS and _is_number(mine) and _is_number(value):
                out[keyword] = min(mine, value)
            elif keyword in ("properties", "prefixItems", "items"):
                pass  # below, with what applies to the rest
            elif _dump_key(mine) != _dump_key(value):
                self._cannot("allOf", _what(out), at.path, f"conflicting values of '{keyword}'")
        if isinstance(a.get("properties"), dict) or isinstance(b.get("properties"), dict):
            mine, theirs = a.get("properties", {}), b.get("properties", {})
            if isinstance(mine, dict) and isinstance(theirs, dict):
                # A key that one side does not declare must meet that side's
                # additionalProperties.
                extra_a = a.get("additionalProperties", True)
                extra_b = b.get("additionalProperties", True)
                out["properties"] = {
                    key: _both(mine.get(key, extra_a), theirs.get(key, extra_b))
                    for key in dict.fromkeys([*mine, *theirs])
                }
            else:
                self._cannot("allOf", _what(out), at.path, "'properties' is not an object")
        if {"prefixItems", "items"} & {*a, *b}:
            # Likewise, an item past one side's prefixItems must meet that side's items.
            prefix_a, prefix_b = a.get("prefixItems", []), b.get("prefixItems", [])
            items_a, items_b = a.get("items", True), b.get("items", True)
            if isinstance(prefix_a, list) and isinstance(prefix_b, list):
                out["prefixItems"] = [
                    _both(
                        prefix_a[i] if i < len(prefix_a) else items_a,
                        prefix_b[i] if i < len(prefix_b) else items_b,
                    )
                    for i in range(max(len(prefix_a), len(prefix_b)))
                ]
                out["items"] = _both(items_a, items_b)
            else:
                self._cannot("allOf", _what(out), at.path, "'prefixItems' is not a list")
        return out

    def _merge_types(self, mine: Any, theirs: Any, at: _At) -> list[str]:
        first = self._types({"type": mine}, at) or []
        second = self._types({"type": theirs}, at) or []
        both = [t for t in first if t in second]
        if {"integer", "number"} <= {*first, *second}:  # one side has each
            both.append("integer")
        if not both:
            raise self._unsatisfiable(at.path, "the types in 'allOf' have nothing in common")
        return list(dict.fromkeys(both))


def _combine(branch: Any, siblings: dict[str, Any]) -> Any:
    """An ``anyOf`` branch with the keywords beside the ``anyOf``, which apply to it as well."""
    if not siblings or branch is False:
        return branch
    if branch is True:
        return siblings
    if (
        isinstance(branch, dict)
        and set(branch) - _ANNOTATIONS == {"$ref"}
        and "$ref" not in siblings
    ):
        return {"$ref": branch["$ref"], **siblings}
    return {"allOf": [branch, siblings]}


def _both(a: Any, b: Any) -> Any:
    if a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return {"allOf": [a, b]}


def _what(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    return _ARTICLES.get(declared, "a schema") if isinstance(declared, str) else "a schema"


def _dump_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _dump_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kinds(value: Any) -> frozenset[str]:
    """The JSON schema types of a value."""
    if value is None:
        return frozenset({"null"})
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return frozenset({"integer", "number"})
    if isinstance(value, float):
        return frozenset({"number"})
    if isinstance(value, str):
        return frozenset({"string"})
    if isinstance(value, list):
        return frozenset({"array"})
    return frozenset({"object"})


def _number_fits(keyword: str, bound: float, value: Any) -> bool:
    if keyword == "minimum":
        return bool(value >= bound)
    if keyword == "maximum":
        return bool(value <= bound)
    if keyword == "exclusiveMinimum":
        return bool(value > bound)
    if keyword == "exclusiveMaximum":
        return bool(value < bound)
    return bound > 0 and (Fraction(str(value)) / Fraction(str(bound))).denominator == 1


def json_schema_grammar(schema: Any, *, strict: bool, param: str) -> tuple[str, list[str]]:
    """A grammar whose root is a JSON value valid against ``schema``.

    Args:
        schema: The client's JSON schema.
        strict: Whether keywords the grammar cannot enforce are refused (see
            ``GrammarBuilder.value``).
        param: The request field the schema came from, for errors.

    Returns:
        The GBNF text, and the keywords not enforced (empty with ``strict``).

    Raises:
        SchemaTooCostly: The schema is beyond ``check_schema_cost``'s limits, or its grammar
            would be.
        UnsupportedSchema: As ``GrammarBuilder.value`` says.
    """
    builder = GrammarBuilder()
    root = builder.value(schema, strict=strict, param=param)
    return builder.grammar(root, param=param), builder.unenforced


def json_object_grammar() -> str:
    """A grammar whose root is any JSON object (``response_format`` of type ``json_object``)."""
    builder = GrammarBuilder()
    return builder.grammar(builder.value({"type": "object"}, strict=False, param="response_format"))
