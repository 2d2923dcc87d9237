"""What the JSON schema converters share: the schema keywords by type, where a subschema is,
the errors a schema can cause, and ``SchemaRules``, the base of the converter's parts (reading
``$ref``, ``type`` and counts, and refusing or noting a keyword it cannot enforce)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from app.errors import InvalidRequest
from app.inference.json_grammar.gbnf import sanitize

if TYPE_CHECKING:
    from app.inference.json_grammar.converter import GrammarBuilder


class UnsupportedSchema(InvalidRequest):
    """A JSON schema that cannot become a grammar: a keyword it cannot enforce under
    ``strict: true``, a ``$ref`` that does not resolve, an invalid or unsatisfiable schema."""


class Unsatisfiable(UnsupportedSchema):
    """No value satisfies a subschema; an ``anyOf`` branch or an optional property like that is
    dropped instead of failing the whole schema."""


# Subschemas inside subschemas (``$ref`` and ``allOf`` expansions included) before Python's stack
# would run out; check_schema_cost allows far less nesting.
MAX_NESTING = 100

ANNOTATIONS = frozenset(
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
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANY_UNSUPPORTED = ("not", "if", "$dynamicRef", "$recursiveRef")
# The keywords of objects and arrays that a grammar cannot enforce, in the order they are named.
OBJECT_UNSUPPORTED = (
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
)
ARRAY_UNSUPPORTED = ("uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems")
NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# The keywords that constrain only values of one type, by that type.
FAMILIES: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties", *OBJECT_UNSUPPORTED}),
    "array": frozenset(
        {"items", "prefixItems", "additionalItems", "minItems", "maxItems", *ARRAY_UNSUPPORTED}
    ),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset(NUMBER_BOUNDS),
}
ARTICLES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "null": "null",
}
LOWER_BOUNDS = frozenset(
    {"minLength", "minItems", "minProperties", "minContains", "minimum", "exclusiveMinimum"}
)
UPPER_BOUNDS = frozenset(
    {"maxLength", "maxItems", "maxProperties", "maxContains", "maximum", "exclusiveMaximum"}
)
INT_FORMATS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

Key = tuple[str, str]


@dataclass(frozen=True)
class At:
    """Where a subschema is: ``path`` for messages, ``name`` for its rules, and ``left``, the
    ``$ref``s met before the first token of the rule being expanded (None once a token has
    been written), to tell recursion that a grammar cannot express."""

    path: str
    name: str
    left: set[Key] | None

    def child(self, path: str, name: str, *, guarded: bool = False) -> At:
        return At(self.path + path, f"{self.name}-{sanitize(name)}", None if guarded else self.left)


def path_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", key):
        return f".{key}"
    return f"[{json.dumps(key, ensure_ascii=False)}]"


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def describe(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    return ARTICLES.get(declared, "a schema") if isinstance(declared, str) else "a schema"


def dump_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def dump_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def value_kinds(value: Any) -> frozenset[str]:
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


def number_fits(keyword: str, bound: float, value: Any) -> bool:
    if keyword == "minimum":
        return bool(value >= bound)
    if keyword == "maximum":
        return bool(value <= bound)
    if keyword == "exclusiveMinimum":
        return bool(value > bound)
    if keyword == "exclusiveMaximum":
        return bool(value < bound)
    return bound > 0 and (Fraction(str(value)) / Fraction(str(bound))).denominator == 1


class SchemaRules:
    """The state and the reading helpers that every part of the converter uses; the parts
    (strings, containers, ``allOf``) and the converter itself derive from it."""

    def __init__(self, builder: GrammarBuilder, document: Any, *, strict: bool, param: str) -> None:
        self.builder = builder
        self.document = document
        self.strict = strict
        self.param = param

    def convert(self, schema: Any, at: At) -> str:
        """The rule name of a value valid against ``schema`` (the converter defines it)."""
        raise NotImplementedError

    def _spend(self) -> None:
        """Counts one subschema converted or flattened against the grammar's budget
        (``GrammarBuilder.spend``)."""
        self.builder.spend(self.param)

    # Errors

    def _cannot(self, keyword: str, what: str, path: str, why: str = "") -> None:
        if self.strict:
            detail = f": {why}" if why else ""
            raise UnsupportedSchema(
                f"'{keyword}' on {what} at {path} is not supported with strict: true{detail}",
                param=self.param,
            )
        self.builder.note_unenforced(keyword)

    def _invalid(self, path: str, why: str) -> UnsupportedSchema:
        return UnsupportedSchema(f"The schema at {path} is invalid: {why}.", param=self.param)

    def _unsatisfiable(self, path: str, why: str) -> Unsatisfiable:
        return Unsatisfiable(f"No value can satisfy the schema at {path}: {why}.", param=self.param)

    # Reading

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
                    node, where = node[part], where + path_key(part)
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node, where = node[int(part)], f"{where}[{part}]"
                else:
                    raise fail
        if not isinstance(node, dict | bool):
            raise fail
        return node, where

    def _types(self, schema: dict[str, Any], at: At) -> list[str] | None:
        """The types to write for ``schema``: its ``type``, or the types whose keywords it has
        (a subset of what it allows, always valid), or None for any value."""
        declared = schema.get("type")
        types: list[str]
        if declared is None:
            types = [t for t, keywords in FAMILIES.items() if not keywords.isdisjoint(schema)]
            if not types:
                return None
        elif isinstance(declared, str):
            types = [declared]
        elif isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
            types = list(dict.fromkeys(declared))
        else:
            raise self._invalid(at.path, "'type' must be a type name or a list of them")
        for type_ in types:
            if type_ not in TYPES:
                raise self._invalid(at.path, f"{type_!r} is not a JSON schema type")
        if "number" in types and "integer" in types:
            types.remove("integer")  # numbers include integers
        if schema.get("nullable") is True and "null" not in types:
            types.append("null")
        return types

    def _bound(self, schema: dict[str, Any], keyword: str, at: At) -> float | None:
        value = schema.get(keyword)
        if value is None:
            return None
        if not is_number(value):
            raise self._invalid(at.path, f"'{keyword}' must be a number")
        return float(value) if isinstance(value, float) else value

    def _count(self, schema: dict[str, Any], keyword: str, at: At) -> int | None:
        value = schema.get(keyword)
        if value is None:
            return None
        if not is_number(value) or value < 0 or value != int(value):
            raise self._invalid(at.path, f"'{keyword}' must be a non-negative integer")
        return int(value)
