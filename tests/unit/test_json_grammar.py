"""JSON schemas to GBNF without a model: what is refused or left unenforced and how it is said,
the grammar text and its rule names, speed, and (through a small GBNF sampler written here) that
every text a grammar allows is JSON valid against its schema."""

from __future__ import annotations

import json
import math
import random
import re
import time
from typing import Any

import jsonschema
import pytest

from app.errors import InvalidRequest
from app.inference.json_grammar import (
    GrammarBuilder,
    UnsupportedSchema,
    json_object_grammar,
    json_schema_grammar,
)
from app.inference.json_grammar.integers import int_range
from app.inference.schema_limits import SchemaTooCostly

PARAM = "response_format.json_schema.schema"

# A GBNF sampler for the forms the converter writes: enough to draw random texts from a
# grammar, independently of llama.cpp.

_Atom = tuple[
    str, Any
]  # ("lit", text) | ("cls", (negated, ranges)) | ("ref", name) | ("grp", alts)
_Item = tuple[_Atom, int, int | None]
_Alts = list[list[_Item]]
# Characters a class may be asked for, beyond random ones: JSON's specials, and some Unicode.
_INTERESTING = 'aZ09 _-.:/\\"\t\n\r\b\f\x00\x1f\x7fé中\u2028😀{}[],'


class _BodyParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def alternatives(self) -> _Alts:
        options = [self.sequence()]
        while self._peek() == "|":
            self.pos += 1
            options.append(self.sequence())
        return options

    def sequence(self) -> list[_Item]:
        items: list[_Item] = []
        while True:
            while self._peek() == " ":
                self.pos += 1
            if self._peek() in ("", "|", ")"):
                return items
            atom = self._atom()
            items.append((atom, *self._quantifier()))

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _atom(self) -> _Atom:
        char = self.text[self.pos]
        if char == '"':
            self.pos += 1
            chars = []
            while self.text[self.pos] != '"':
                chars.append(self._char())
            self.pos += 1
            return ("lit", "".join(chars))
        if char == "[":
            self.pos += 1
            negated = self._peek() == "^"
            self.pos += negated
            ranges = []
            while self.text[self.pos] != "]":
                first = last = self._char()
                if self.text[self.pos] == "-" and self.text[self.pos + 1] != "]":
                    self.pos += 1
                    last = self._char()
                ranges.append((ord(first), ord(last)))
            self.pos += 1
            return ("cls", (negated, ranges))
        if char == "(":
            self.pos += 1
            alts = self.alternatives()
            assert self.text[self.pos] == ")", self.text
            self.pos += 1
            return ("grp", alts)
        match = re.compile(r"[A-Za-z0-9-]+").match(self.text, self.pos)
        assert match, self.text[self.pos :]
        self.pos = match.end()
        return ("ref", match.group())

    def _char(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char != "\\":
            return char
        escape = self.text[self.pos]
        self.pos += 1
        size = {"x": 2, "u": 4, "U": 8}.get(escape)
        if size:
            self.pos += size
            return chr(int(self.text[self.pos - size : self.pos], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(escape, escape)

    def _quantifier(self) -> tuple[int, int | None]:
        char = self._peek()
        if char in ("?", "*", "+"):
            self.pos += 1
            return {"?": (0, 1), "*": (0, None), "+": (1, None)}[char]
        match = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.text, self.pos)
        if not match:
            return (1, 1)
        self.pos = match.end()
        low = int(match.group(1))
        if not match.group(2):
            return (low, low)
        return (low, int(match.group(3)) if match.group(3) else None)


class GbnfSampler:
    """Random texts of a GBNF grammar; past ``depth`` nested rules it takes the shortest way."""

    def __init__(self, grammar: str, seed: int, depth: int = 10) -> None:
        self.rules: dict[str, _Alts] = {}
        for line in grammar.splitlines():
            name, _, body = line.partition(" ::= ")
            self.rules[name] = _BodyParser(body).alternatives()
        self.rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.depth = depth
        self.cost = dict.fromkeys(self.rules, math.inf)
        changed = True
        while changed:
            changed = False
            for name, alts in self.rules.items():
                cost = self._alts_cost(alts)
                if cost < self.cost[name]:
                    self.cost[name], changed = cost, True

    def _alts_cost(self, alts: _Alts) -> float:
        return min(self._seq_cost(seq) for seq in alts)

    def _seq_cost(self, seq: list[_Item]) -> float:
        return sum(low * self._atom_cost(atom) for atom, low, _ in seq if low)

    def _atom_cost(self, atom: _Atom) -> float:
        kind, value = atom
        if kind == "lit":
            return float(len(value))
        if kind == "cls":
            return 1.0
        if kind == "ref":
            return self.cost[value]
        return self._alts_cost(value)

    def sample(self) -> str:
        out: list[str] = []
        self._alts(self.rules["root"], 0, out)
        return "".join(out)

    def _alts(self, alts: _Alts, depth: int, out: list[str]) -> None:
        deep = depth > self.depth
        seq = min(alts, key=self._seq_cost) if deep else self.rng.choice(alts)
        for atom, low, high in seq:
            if deep:
                count = low
            elif high is not None and self.rng.random() < 0.2:
                count = high
            else:
                count = self.rng.randint(low, low + 4 if high is None else min(high, low + 4))
            for _ in range(count):
                self._atom(atom, depth, out)

    def _atom(self, atom: _Atom, depth: int, out: list[str]) -> None:
        kind, value = atom
        if kind == "lit":
            out.append(value)
        elif kind == "cls":
            out.append(self._char(*value))
        elif kind == "ref":
            self._alts(self.rules[value], depth + 1, out)
        else:
            self._alts(value, depth, out)

    def _char(self, negated: bool, ranges: list[tuple[int, int]]) -> str:
        def member(code: int) -> bool:
            inside = any(first <= code <= last for first, last in ranges)
            return inside != negated and not 0xD800 <= code <= 0xDFFF

        pool = [c for c in _INTERESTING if member(ord(c))]
        candidates = [self.rng.randint(first, last) for first, last in ranges]
        candidates += [self.rng.randint(32, 126), self.rng.randint(0x80, 0x2FFFF)]
        pool += [chr(code) for code in candidates if member(code)]
        while not pool:
            code = self.rng.randint(0, 0x10FFFF)
            if member(code):
                pool.append(chr(code))
        return self.rng.choice(pool)


def declared_keys(schema: Any) -> set[str]:
    """Every key of every ``properties`` in ``schema``."""
    if isinstance(schema, list):
        return set().union(*(declared_keys(s) for s in schema))
    if not isinstance(schema, dict):
        return set()
    keys = set(schema.get("properties", {})) | set(schema.get("required", []))
    return keys.union(*(declared_keys(s) for s in schema.values()))


def no_declared_duplicates(declared: set[str]) -> Any:
    """An object hook that fails on a declared key written twice: the JSON is still valid, but
    the value it keeps may not be the one the grammar checked. Extra keys may repeat."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        assert not {k for k in keys if keys.count(k) > 1} & declared, keys
        return dict(pairs)

    return hook


def assert_samples_valid(
    schema: Any,
    count: int = 150,
    validator: type[Any] = jsonschema.Draft202012Validator,
    as_json_schema: Any = None,
) -> list[Any]:
    """Draws ``count`` texts from the grammar of ``schema`` and checks each with ``validator``
    (against ``as_json_schema`` where ``schema`` says what JSON Schema says otherwise)."""
    grammar, unenforced = json_schema_grammar(schema, strict=True, param=PARAM)
    assert unenforced == []
    reference = schema if as_json_schema is None else as_json_schema
    check = validator(reference, format_checker=validator.FORMAT_CHECKER)
    sampler = GbnfSampler(grammar, seed=len(json.dumps(schema)))
    hook = no_declared_duplicates(declared_keys(schema))
    values = []
    for _ in range(count):
        text = sampler.sample()
        value = json.loads(text, object_pairs_hook=hook)
        errors = [error.message for error in check.iter_errors(value)]
        assert not errors, f"{text!r}: {errors}"
        values.append(value)
    return values


# What the grammars enforce


POEM = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
SAMPLED: list[Any] = [
    POEM,
    TREE,
    {},
    True,
    {"type": "object"},
    {"type": "array", "items": {"type": "number"}},
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["zip"],
            },
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["age", "tags"],
        "additionalProperties": False,
    },
    {
        # Keys that are prefixes of each other, escapes and non-ASCII, and extra keys allowed.
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "ab": {"type": "boolean"},
            'q"\\\n': {"type": "null"},
            "été": {"const": "x"},
            "": {"type": "integer"},
        },
        "additionalProperties": {"type": "string", "maxLength": 2},
    },
    {"properties": {"x": {"type": "integer"}}, "required": ["x", "y"]},
    {"enum": ["red", "green", 3, 2.5, None, True, {"a": [1]}, ["x"]]},
    {"type": "string", "enum": ["a", "b", 1]},
    {"const": 'quote " and \\ and \n'},
    {"type": ["string", "null"], "maxLength": 3},
    {"type": ["integer", "boolean"], "minimum": 10, "maximum": 12},
    {"anyOf": [{"type": "integer", "maximum": -1}, {"type": "string", "format": "date"}]},
    {"oneOf": [{"type": "boolean"}, {"type": "null"}, {"type": "array", "maxItems": 1}]},
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "additionalProperties": False,
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    },
    {
        "allOf": [
            {"$ref": "#/definitions/base"},
            {"properties": {"extra": {"type": "boolean"}}, "required": ["extra"]},
        ],
        "definitions": {
            "base": {
                "type": "object",
                "properties": {"id": {"type": "string", "format": "uuid"}},
                "required": ["id"],
            }
        },
    },
    {
        "type": "array",
        "prefixItems": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
        "items": False,
    },
    {"type": "array", "prefixItems": [{"type": "boolean"}], "items": {"type": "null"}},
    {"type": "array", "items": {"type": "string", "format": "time"}, "minItems": 2},
    {"type": "string", "pattern": r"^[A-Z]{2}-\d{3,5}$"},
    {"type": "string", "pattern": r"\w+@\w+\.com"},
    {"type": "string", "pattern": r"^(foo|bar)+$"},
    {"type": "string", "pattern": r"^[^a-z]{1,6}$"},
    {"type": "string", "pattern": r"^.{2,4}$"},
    {"type": "string", "pattern": r"^\S+\s\S+$"},
    {"type": "string", "pattern": r'^\\\d"\x41[\-\]]$'},
    {"type": "string", "pattern": r"colou?r|^$"},
    {"type": "string", "pattern": r"^(?:[a-c]|\D)*?z?$"},
    {"type": "string", "pattern": r"^\W\w[\s\S]$"},
    {"type": "string", "pattern": r"^(a|)*(b?c*)+x(d?|e)*$"},
    {"type": "string", "minLength": 2, "maxLength": 4},
    {"type": "string", "format": "date", "maxLength": 10},
    {"type": "integer", "format": "int32"},
    {"type": "integer", "minimum": 123456789, "maximum": 987654321},
    {"type": "integer", "minimum": -1000000},
    {"type": "integer", "maximum": -77, "multipleOf": 1},
    {
        "allOf": [
            {"type": "array", "prefixItems": [{"type": "integer"}], "maxItems": 3},
            {"items": {"type": ["integer", "string"], "maximum": 5}, "minItems": 1},
        ]
    },
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "additionalProperties": False},
    {"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 3},
    {
        "$defs": {"a": {"properties": {"a": {"const": 1}}, "required": ["a"]}},
        "type": "object",
        "properties": {"z": {"type": "boolean"}},
        "anyOf": [{"$ref": "#/$defs/a"}, {"required": ["z"]}],
    },
    {
        # Recursion through a $ref with keywords beside it.
        "$defs": {
            "n": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "maximum": 9},
                    "k": {"$ref": "#/$defs/n", "required": ["x"]},
                },
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/n",
    },
]


@pytest.mark.parametrize("schema", SAMPLED, ids=lambda s: json.dumps(s)[:60])
def test_every_text_a_grammar_allows_is_valid_json_of_its_schema(schema: Any) -> None:
    assert_samples_valid(schema)


def test_nullable_also_allows_null() -> None:
    # OpenAPI's nullable, which JSON Schema validators do not know.
    schema = {"type": "integer", "nullable": True, "exclusiveMinimum": 0, "exclusiveMaximum": 99}
    values = assert_samples_valid(
        schema, as_json_schema={**schema, "type": ["integer", "null"]}, count=100
    )
    assert None in values
    enum = {"enum": ["a"], "nullable": True}
    assert set(assert_samples_valid(enum, as_json_schema={"enum": ["a", None]})) == {"a", None}


def test_the_old_array_form_of_items() -> None:
    schema = {
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "additionalItems": False,
    }
    values = assert_samples_valid(schema, validator=jsonschema.Draft7Validator)
    assert all(len(v) <= 2 for v in values)


def test_samples_reach_the_corners() -> None:
    # The sampler explores: required keys always, optional ones sometimes, bounds reached.
    values = assert_samples_valid(SAMPLED[6], count=300)
    assert all("age" in v and "tags" in v for v in values)
    assert any("name" in v for v in values)
    assert any("name" not in v for v in values)
    assert {len(v["tags"]) for v in values} == {1, 2, 3}
    ages = {v["age"] for v in values}
    assert {0, 150} <= ages
    patterns = assert_samples_valid({"type": "string", "pattern": "^a.$"}, count=300)
    assert any(len(json.dumps(p)) > 4 for p in patterns)  # an escaped character after 'a'


def test_strings_never_hold_raw_control_characters() -> None:
    sampler = GbnfSampler(json_object_grammar(), seed=1)
    for _ in range(200):
        text = sampler.sample()
        assert isinstance(json.loads(text), dict)  # json.loads refuses raw control characters
    grammar = json_schema_grammar(POEM, strict=True, param=PARAM)[0]
    assert r'char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u"' in grammar


@pytest.mark.parametrize(
    ("low", "high"),
    [(-5, 120), (0, 0), (1, 1), (-1, -1), (-1000, -11), (7, 1999), (99, 101), (None, 12),
     (-12, None), (None, -345), (345, None), (10, 99), (1, 9)],
)  # fmt: skip
def test_integer_ranges_are_exact(low: int | None, high: int | None) -> None:
    # The digit patterns are regular expressions once GBNF's quotes and spaces are gone.
    regex = re.compile("|".join(int_range(low, high)).replace('"', "").replace(" ", ""))
    for number in range(-2100, 2100):
        inside = (low is None or number >= low) and (high is None or number <= high)
        assert bool(regex.fullmatch(str(number))) == inside, number
    assert not regex.fullmatch("007")
    assert not regex.fullmatch("-0")
    if high is None:
        assert regex.fullmatch("9" * 15)
        assert not regex.fullmatch("9" * 16)


# What is refused, and how it is said


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}},
            "'minimum' on a number at $.properties.price is not supported with strict: true",
        ),
        (
            {"type": "integer", "multipleOf": 5},
            "'multipleOf' on an integer at $ is not supported with strict: true",
        ),
        (
            {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "'uniqueItems' on an array at $ is not supported with strict: true",
        ),
        ({"type": "array", "contains": {"type": "integer"}}, "'contains' on an array at $"),
        ({"not": {"type": "string"}}, "'not' on a schema at $"),
        ({"type": "string", "if": {}, "then": {}}, "'if' on a string at $"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "'patternProperties' on an object"),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "'propertyNames' on an object"),
        ({"type": "object", "minProperties": 1}, "'minProperties' on an object at $"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired'"),
        (
            {"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}},
            "'format' on a string at $.properties.mail is not supported with strict: true: the "
            "format 'email'",
        ),
        (
            {"type": "string", "pattern": "^(?=a)"},
            "'pattern' on a string at $ is not supported with strict: true: the group at offset "
            "1 (lookarounds",
        ),
        ({"type": "string", "pattern": r"(a)\1"}, "back references"),
        ({"type": "string", "pattern": r"\bword"}, "word boundaries"),
        ({"type": "string", "pattern": "a^b"}, "'^' and '$' are supported only at the start"),
        ({"type": "string", "pattern": "(?i)abc"}, "'pattern' on a string"),
        ({"type": "string", "pattern": "[[:alpha:]]"}, "POSIX classes"),
        ({"type": "string", "pattern": "^a$", "maxLength": 3}, "'maxLength' on a string with"),
        ({"type": "number", "exclusiveMaximum": 1.5}, "'exclusiveMaximum' on a number at $"),
        (
            {"anyOf": [{"type": "string"}], "oneOf": [{"type": "string"}]},
            "'oneOf' on a schema with 'anyOf' at $",
        ),
        (
            {"allOf": [{"type": "string", "pattern": "a"}, {"pattern": "b"}]},
            "'allOf' on a string at $ is not supported with strict: true: conflicting values of "
            "'pattern'",
        ),
        (
            {"$defs": {"p": {"type": "number", "maximum": 3}}, "items": {"$ref": "#/$defs/p"}},
            "'maximum' on a number at $.$defs.p",
        ),
    ],
)
def test_strict_refuses_what_it_cannot_enforce(schema: Any, message: str) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        json_schema_grammar(schema, strict=True, param="tools[0].function.parameters")
    assert caught.value.message.startswith(message) or message in caught.value.message
    assert caught.value.param == "tools[0].function.parameters"
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.status_code == 400
    # Without strict the same schema converts; the keyword is named as not enforced.
    grammar, unenforced = json_schema_grammar(schema, strict=False, param=PARAM)
    assert grammar.startswith("root ::= ")
    assert unenforced
    assert unenforced == sorted(set(unenforced))


def test_not_strict_names_every_keyword_not_enforced() -> None:
    schema = {
        "type": "object",
        "properties": {
            "price": {"type": "number", "minimum": 0, "multipleOf": 0.01},
            "tags": {"type": "array", "uniqueItems": True},
            "mail": {"type": "string", "format": "email", "minLength": 3},
        },
        "minProperties": 1,
    }
    grammar, unenforced = json_schema_grammar(schema, strict=False, param=PARAM)
    assert unenforced == ["format", "minProperties", "minimum", "multipleOf", "uniqueItems"]
    # What is enforceable still is: the email is at least 3 characters.
    assert "char{3,}" in grammar


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$ref": "#/$defs/missing"}, "The '$ref' '#/$defs/missing' at $ does not resolve"),
        ({"$ref": "https://example.com/s.json"}, "does not resolve"),
        ({"properties": {"a": 5}}, "The schema at $.properties.a is invalid: a schema must be"),
        ({"type": "array", "items": "string"}, "The schema at $.items is invalid"),
        ({"type": "strin"}, "'strin' is not a JSON schema type"),
        ({"type": "string", "maxLength": -1}, "'maxLength' must be a non-negative integer"),
        ({"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "refers to itself through '$ref' before"),
        ({"allOf": [{"$ref": "#"}]}, "refers to itself through 'allOf'"),
        (False, "No value can satisfy the schema at $"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "No value can satisfy"),
        ({"type": "integer", "minimum": 5, "exclusiveMaximum": 5}, "no integer lies within"),
        ({"type": "string", "enum": [1, 2]}, "no value of 'enum' or 'const' fits"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "have nothing in common"),
        (
            {"type": "object", "required": ["a"], "additionalProperties": False},
            "the required key 'a' cannot be present",
        ),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_always_refused(schema: Any, message: str, strict: bool) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        json_schema_grammar(schema, strict=strict, param="tools[1].function.parameters")
    assert message in caught.value.message
    assert caught.value.param == "tools[1].function.parameters"


def test_the_message_names_keyword_type_and_place() -> None:
    schema = {"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}}
    with pytest.raises(UnsupportedSchema) as caught:
        json_schema_grammar(schema, strict=True, param=PARAM)
    assert caught.value.message == (
        "'minimum' on a number at $.properties.price is not supported with strict: true"
    )
    assert caught.value.param == PARAM


def test_recursion_before_any_token_is_refused_however_it_is_reached() -> None:
    # B is done (through the object) before A reaches it again at its start.
    schema = {
        "$defs": {
            "A": {"anyOf": [{"properties": {"b": {"$ref": "#/$defs/B"}}}, {"$ref": "#/$defs/B"}]},
            "B": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "string"}]},
        },
        "$ref": "#/$defs/A",
    }
    with pytest.raises(UnsupportedSchema, match="refers to itself through '\\$ref' before"):
        json_schema_grammar(schema, strict=True, param=PARAM)
    # Through an object or an array it is fine.
    assert "node ::=" in json_schema_grammar(TREE, strict=True, param=PARAM)[0]


def test_not_strict_falls_back_to_what_it_can_enforce() -> None:
    schema = {"type": "string", "pattern": "(?=x)", "minLength": 2, "maxLength": 3}
    grammar, unenforced = json_schema_grammar(schema, strict=False, param=PARAM)
    assert unenforced == ["pattern"]
    assert 'value ::= "\\"" char{2,3} "\\"" space' in grammar


def test_annotations_are_ignored() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://example.com/x",
        "$comment": "c",
        "title": "T",
        "description": "D",
        "type": "object",
        "properties": {
            "a": {
                "type": "string",
                "description": "d",
                "examples": ["x"],
                "default": "y",
                "deprecated": True,
                "readOnly": True,
                "writeOnly": False,
            },
            "b": {"$ref": "#/$defs/b", "description": "only an annotation beside $ref"},
        },
        "$defs": {"b": {"type": "boolean", "title": "B"}},
        "x-vendor": {"anything": True},
    }
    plain = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}},
    }
    grammar, unenforced = json_schema_grammar(schema, strict=True, param=PARAM)
    assert unenforced == []
    assert grammar == json_schema_grammar(plain, strict=True, param=PARAM)[0]


def test_too_costly_schemas_are_refused_first() -> None:
    with pytest.raises(SchemaTooCostly):
        json_schema_grammar({"type": "array", "minItems": 10**9}, strict=True, param=PARAM)


def doubling(levels: int, keyword: str = "allOf") -> dict[str, object]:
    """A small schema whose expansion doubles at each level: 2 ** ``levels`` leaves."""
    defs: dict[str, object] = {
        f"d{i}": {keyword: [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(levels)
    }
    defs[f"d{levels}"] = {"type": "string", "minLength": 1}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize("strict", [True, False])
def test_work_that_refs_multiply_is_bounded(strict: bool) -> None:
    # allOf expands each reference: 2 ** 30 parts from 2 KB of schema.
    with pytest.raises(SchemaTooCostly, match="each '\\$ref' and 'allOf' expanded"):
        json_schema_grammar(doubling(30), strict=strict, param=PARAM)
    # A few levels are fine, and anyOf's references are converted once however often used.
    json_schema_grammar(doubling(5), strict=strict, param=PARAM)
    grammar, _ = json_schema_grammar(doubling(30, "anyOf"), strict=strict, param=PARAM)
    assert len(grammar) < 10_000


def test_the_budget_is_shared_by_every_schema_of_a_grammar() -> None:
    builder = GrammarBuilder()  # as for a request's tools
    builder.value(doubling(14), strict=True, param="tools[0].function.parameters")
    with pytest.raises(SchemaTooCostly) as refused:
        builder.value(doubling(14), strict=True, param="tools[1].function.parameters")
    assert refused.value.param == "tools[1].function.parameters"


# The grammar text


def test_the_grammar_of_a_simple_schema() -> None:
    schema = {**POEM, "additionalProperties": False}
    grammar, unenforced = json_schema_grammar(schema, strict=True, param=PARAM)
    assert unenforced == []
    assert grammar == (
        "root ::= value\n"
        r'char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CeEfF] [0-9a-fA-F]{3} | '
        r"[dD] [0-7] [0-9a-fA-F]{2}))" + "\n"
        r'string ::= "\"" char* "\"" space' + "\n"
        r'space ::= | " " | "\n" [ \t]{0,20}' + "\n"
        r'value ::= "{" space "\"poem\":" space string "}" space' + "\n"
    )


def test_optional_keys_are_a_chain_of_rules_not_every_subset() -> None:
    properties = {f"k{i}": {"type": "boolean"} for i in range(200)}
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    grammar = json_schema_grammar(schema, strict=True, param=PARAM)[0]
    assert len(grammar) < 60_000  # linear: about 2 short rules a key
    values = assert_samples_valid(schema, count=50)
    for value in values:  # keys in the order of properties
        assert list(value) == sorted(value, key=lambda k: int(k[1:]))


def test_rule_names_are_stable_and_say_where() -> None:
    schema = {
        "type": "object",
        "properties": {
            "price": {"type": "integer", "minimum": 1},
            "the items": {"type": "array", "items": {"enum": ["a", "b"]}},
            "size": {"anyOf": [{"type": "integer", "maximum": 3}, {"const": "big"}]},
        },
        "required": ["price"],
        "additionalProperties": False,
    }
    first = json_schema_grammar(schema, strict=True, param=PARAM)[0]
    assert first == json_schema_grammar(json.loads(json.dumps(schema)), strict=True, param=PARAM)[0]
    names = [line.split(" ::= ")[0] for line in first.splitlines()]
    assert {
        "value",
        "value-price",
        "value-the-items",
        "value-the-items-item",
        "value-size-0",
    } <= set(names)
    assert len(names) == len(set(names))


def test_builder_api_for_several_values() -> None:
    builder = GrammarBuilder()
    first = builder.value(POEM, strict=True, param="tools[0].function.parameters", name="call")
    second = builder.value(TREE, strict=True, param="tools[1].function.parameters", name="call")
    assert first != second
    name = builder.literal('{"name": "a", "arguments": ')
    root = builder.rule("tool-call", f'{name} ({first} | {second}) "}}"')
    grammar = builder.grammar(root)
    assert grammar.startswith(f"root ::= {root}\n")
    # Each primitive once, no rule twice, and only rules the root reaches.
    names = [line.split(" ::= ")[0] for line in grammar.splitlines()]
    assert len(names) == len(set(names))
    assert names.count("string") == 1
    unused = builder.rule("unused", '"x"')
    assert unused not in builder.grammar(root).split()
    # An identical rule is not added twice.
    assert builder.rule("other", '"x"') == unused
    assert builder.rule("root", '"y"') != "root"
    assert builder.unenforced == []
    builder.value({"type": "number", "maximum": 3, "multipleOf": 2}, strict=False, param="p")
    assert builder.unenforced == ["maximum", "multipleOf"]


def test_a_builder_survives_a_refused_schema() -> None:
    builder = GrammarBuilder()
    with pytest.raises(UnsupportedSchema):
        builder.value({"properties": {"a": {"not": {}}}}, strict=True, param="p")
    root = builder.value(POEM, strict=True, param="p")
    GbnfSampler(builder.grammar(root), seed=0).sample()


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("abc", '"abc"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("a\nb\tc\rd", r'"a\nb\tc\rd"'),
        ("\x00\x1f\x7f", r'"\x00\x1F\x7F"'),
        ("é中😀", '"é中😀"'),
        ("\u2028", r'"\u2028"'),
        ("", '""'),
    ],
)
def test_literal_escaping(text: str, literal: str) -> None:
    assert GrammarBuilder.literal(text) == literal
    sampler = GbnfSampler(f"root ::= {literal}", seed=0)
    assert sampler.sample() == text


# Speed


def _many_subschemas(count: int) -> dict[str, Any]:
    """An object of objects, ``count`` subschemas in all, of every kind the converter writes."""
    kinds: list[tuple[int, Any]] = [  # (subschemas in it, schema)
        (1, {"type": "string", "maxLength": 20}),
        (1, {"type": "integer", "minimum": -50, "maximum": 5000}),
        (1, {"type": "string", "pattern": r"^[a-z]+-\d{2}$"}),
        (1, {"enum": ["a", "b", "c"]}),
        (2, {"type": "array", "items": {"type": "number"}, "maxItems": 4}),
        (3, {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]}),
    ]
    objects: dict[str, Any] = {}
    total = 1
    while True:
        i = len(objects)
        chosen = [kinds[(i + j) % len(kinds)] for j in range(7)]
        size = 1 + sum(n for n, _ in chosen)
        if total + size > count:
            break
        total += size
        properties = {f"field_{i}_{j}": schema for j, (_, schema) in enumerate(chosen)}
        objects[f"object_{i}"] = {
            "type": "object",
            "properties": properties,
            "required": [f"field_{i}_0"],
        }
    return {"type": "object", "properties": objects}


def test_2000_subschemas_convert_in_well_under_a_second() -> None:
    schema = _many_subschemas(2000)
    started = time.perf_counter()
    grammar, _ = json_schema_grammar(schema, strict=True, param=PARAM)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed
    assert len(grammar) < 1024 * 1024


def test_the_most_costly_allowed_schemas_convert_quickly() -> None:
    for schema in LARGEST:
        started = time.perf_counter()
        json_schema_grammar(schema, strict=True, param=PARAM)
        assert time.perf_counter() - started < 0.5, json.dumps(schema)[:80]


LARGEST: list[Any] = [
    _many_subschemas(2000),
    {  # optional keys, extra keys allowed: the largest grammar per byte of schema
        "type": "object",
        "properties": {
            f"object_number_{i}": {
                "type": "object",
                "properties": {f"a_long_property_{j}_{i}": {"type": "string"} for j in range(7)},
            }
            for i in range(249)
        },
    },
    {"type": "array", "items": {"type": "string", "maxLength": 1000}, "minItems": 1000},
    {"type": "string", "pattern": "^(" + "|".join(f"w{i:03d}" for i in range(190)) + ")$"},
    {"type": "string", "pattern": "^(a{1000}|[^x]{999}){1000}$"},
    {"enum": [f"value number {i}" for i in range(1000)]},
    {
        "type": "object",
        "properties": {f"property_number_{i:03d}": {"type": "integer"} for i in range(256)},
    },
    {
        "$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}},
        "properties": {f"p{i}": {"$ref": "#/$defs/n"} for i in range(256)},
    },
    {"anyOf": [{"type": "integer", "minimum": i * 1000, "maximum": i * 1000 + 999} for i in
               range(128)]},
]  # fmt: skip
