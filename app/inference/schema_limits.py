"""The bounds on what a client's JSON schema may cost before it becomes a grammar.

A schema is data from the client: ``minItems: 1000000000`` once became a grammar of a billion
items, a 100,000-value ``enum`` a grammar that took seconds to compile. So a schema is measured
first (its size, nesting, subschemas, repetition counts, enum values, alternatives, patterns) and
refused with a 400 naming the limit, in time linear in its size; ``json_grammar`` bounds the
grammar that comes out again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidRequest


@dataclass(frozen=True)
class SchemaLimits:
    """What one JSON schema may ask for (the README lists them)."""

    max_bytes: int = 128 * 1024  # the schema as JSON
    max_depth: int = 16  # subschemas inside subschemas
    max_subschemas: int = 2000
    max_repeat: int = 1000  # minItems/maxItems/minLength/maxLength/..., and {m,n} in patterns
    max_enum_values: int = 1000  # all enum values of the schema together
    max_alternatives: int = 128  # anyOf/oneOf/allOf entries, and types in a type list
    max_properties: int = 256  # properties of one object
    max_pattern_length: int = 1000
    # Subschemas converted, each expansion of a '$ref' or an 'allOf' counted, for all the
    # schemas of one grammar (a request's tools together): a small schema of 'allOf's that
    # refer twice to the next one doubles its work at each level.
    max_expansions: int = 100_000
    max_convert_seconds: float = 2.0  # converting the schemas of one grammar
    max_grammar_bytes: int = 1024 * 1024  # the converted grammar


LIMITS = SchemaLimits()

_COUNTS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = (
    "items",
    "additionalProperties",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class SchemaTooCostly(InvalidRequest):
    """A schema beyond one of ``SchemaLimits``."""


def too_costly(
    what: str, value: int, limit: int, *, param: str, over: bool = False
) -> SchemaTooCostly:
    """The error for a schema whose ``what`` is ``value`` (``over``: more than ``value``), above
    ``limit``."""
    amount = f"more than {value}" if over else str(value)
    return SchemaTooCostly(
        f"The JSON schema is too costly to enforce: {what} is {amount}, at most {limit} is "
        "allowed.",
        param=param,
    )


def check_schema_cost(
    schema: Any, param: str = "response_format.json_schema.schema", limits: SchemaLimits = LIMITS
) -> None:
    """Raises ``SchemaTooCostly`` (a 400 naming the limit) when ``schema`` asks for more than
    ``limits`` allow; cheap, linear in the schema's size."""

    def refuse(what: str, value: int, limit: int) -> SchemaTooCostly:
        return too_costly(what, value, limit, param=param)

    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_bytes:
        raise refuse("its size in bytes", size, limits.max_bytes)
    enum_values = 0
    for subschemas, (node, depth) in enumerate(_subschemas(schema), start=1):
        if subschemas > limits.max_subschemas:
            raise refuse("the number of subschemas", subschemas, limits.max_subschemas)
        if depth > limits.max_depth:
            raise refuse("the nesting depth", depth, limits.max_depth)
        for key in _COUNTS:
            value = node.get(key)
            if isinstance(value, int | float) and value > limits.max_repeat:
                raise refuse(f"'{key}'", int(value), limits.max_repeat)
        enum = node.get("enum")
        if isinstance(enum, list):
            enum_values += len(enum)
            if enum_values > limits.max_enum_values:
                raise refuse("the number of enum values", enum_values, limits.max_enum_values)
        for key in (*_SUBSCHEMA_LISTS, "type"):
            entries = node.get(key)
            if isinstance(entries, list) and len(entries) > limits.max_alternatives:
                raise refuse(f"the length of '{key}'", len(entries), limits.max_alternatives)
        properties = node.get("properties")
        if isinstance(properties, dict) and len(properties) > limits.max_properties:
            raise refuse(
                "the number of properties of an object", len(properties), limits.max_properties
            )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if len(pattern) > limits.max_pattern_length:
                raise refuse("the length of 'pattern'", len(pattern), limits.max_pattern_length)
            for low, high in _QUANTIFIER.findall(pattern):
                count = max(int(low), int(high or 0))
                if count > limits.max_repeat:
                    raise refuse("a repetition count in 'pattern'", count, limits.max_repeat)


def _subschemas(schema: Any, depth: int = 1) -> Iterator[tuple[dict[str, Any], int]]:
    """Every subschema with its depth (``$ref`` targets are counted where they are defined)."""
    if not isinstance(schema, dict):
        return
    yield schema, depth
    for key in _SUBSCHEMA_MAPS:
        children = schema.get(key)
        if isinstance(children, dict):
            for child in children.values():
                yield from _subschemas(child, depth + 1)
    for key in _SUBSCHEMA_LISTS:
        children = schema.get(key)
        if isinstance(children, list):
            for child in children:
                yield from _subschemas(child, depth + 1)
    for key in _SUBSCHEMAS:
        child = schema.get(key)
        if isinstance(child, list):  # the old tuple form of items
            for item in child:
                yield from _subschemas(item, depth + 1)
        else:
            yield from _subschemas(child, depth + 1)
