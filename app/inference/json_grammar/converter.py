"""JSON schemas to GBNF: the converter of one schema document, and the builder that collects
the rules of one grammar (``GrammarBuilder``)."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Any

from app.inference.json_grammar.all_of import AllOfRules, combine
from app.inference.json_grammar.containers import ContainerRules
from app.inference.json_grammar.gbnf import GbnfRules, group, sanitize
from app.inference.json_grammar.integers import int_range
from app.inference.json_grammar.schema import (
    ANNOTATIONS,
    ANY_UNSUPPORTED,
    ARTICLES,
    FAMILIES,
    INT_FORMATS,
    MAX_NESTING,
    NUMBER_BOUNDS,
    At,
    Key,
    Unsatisfiable,
    UnsupportedSchema,
    describe,
    dump,
    dump_key,
    dump_type,
    is_number,
    number_fits,
    value_kinds,
)
from app.inference.json_grammar.strings import StringRules
from app.inference.regex_subset import PatternError
from app.inference.schema_limits import LIMITS, SchemaTooCostly, check_schema_cost, too_costly

# Rules made (some never reached, such as unsatisfiable branches) beyond the final grammar's limit.
_MAX_DEFINED = 4


class GrammarBuilder(GbnfRules):
    """Collects the GBNF rules of one grammar, with the rules of JSON values valid against
    schemas (``value``) among them."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns: dict[str, str | PatternError] = {}  # pattern -> its GBNF, or why not
        self._unenforced: set[str] = set()
        self._expansions = 0
        self._deadline = time.monotonic() + LIMITS.max_convert_seconds

    def spend(self, param: str) -> None:
        """Counts one subschema converted or flattened, for every schema of this grammar
        together (all the tools of a request): the schemas' own size is bounded before, but
        ``$ref`` and ``allOf`` can multiply the work, and one step can cost as much as a
        subschema's size. Raises ``SchemaTooCostly`` past ``max_expansions``, past
        ``max_convert_seconds``, or once the rules made are far past ``max_grammar_bytes``."""
        self._expansions += 1
        if self._expansions > LIMITS.max_expansions:
            raise too_costly(
                "the number of subschemas to convert, each '$ref' and 'allOf' expanded",
                LIMITS.max_expansions,
                LIMITS.max_expansions,
                param=param,
                over=True,
            )
        if self.defined_bytes > _MAX_DEFINED * LIMITS.max_grammar_bytes:
            raise too_costly(
                "the size of the rules it makes in bytes",
                self.defined_bytes,
                _MAX_DEFINED * LIMITS.max_grammar_bytes,
                param=param,
            )
        if time.monotonic() > self._deadline:
            raise SchemaTooCostly(
                "The JSON schema is too costly to enforce: converting it takes more than "
                f"{LIMITS.max_convert_seconds:g} seconds.",
                param=param,
            )

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
            return Converter(self, schema, strict=strict, param=param).root(sanitize(name, 80))
        except RecursionError:
            raise SchemaTooCostly(
                "The JSON schema is too costly to enforce: it nests too deeply.", param=param
            ) from None

    @property
    def unenforced(self) -> list[str]:
        """The keywords (sorted, each once) that were not enforced because ``strict`` was off."""
        return sorted(self._unenforced)

    def note_unenforced(self, keyword: str) -> None:
        """Records that ``keyword`` was not enforced (``strict`` was off)."""
        self._unenforced.add(keyword)


class Converter(StringRules, ContainerRules, AllOfRules):
    """Turns one schema document into rules of a builder: ``$ref`` expansion (recursion
    included), ``anyOf``/``oneOf``, ``enum``/``const``, the type of each value and integers;
    strings, containers and ``allOf`` are its parts'."""

    def __init__(self, builder: GrammarBuilder, document: Any, *, strict: bool, param: str) -> None:
        super().__init__(builder, document, strict=strict, param=param)
        self._pending: set[Key] = set()
        self._placeholders: dict[Key, str] = {}
        self._done: dict[Key, str] = {}
        self._edges: dict[Key, frozenset[Key]] = {}
        self._depth = 0

    # Schemas

    def root(self, name: str) -> str:
        at = At("$", name, None)
        return self._expand(("#", ""), self.document, None, at)

    def convert(self, schema: Any, at: At) -> str:
        self._spend()
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise SchemaTooCostly(
                    "The JSON schema is too costly to enforce: it nests too deeply.",
                    param=self.param,
                )
            if schema is True:
                return self.builder.primitive("json-value")
            if schema is False:
                raise self._unsatisfiable(at.path, "it is false")
            if not isinstance(schema, dict):
                raise self._invalid(
                    at.path, f"a schema must be an object or a boolean, not {dump_type(schema)}"
                )
            if "$ref" in schema:
                return self._ref(schema, at)
            if "allOf" in schema:
                schema = self._merge_all(schema, at)
            return self._plain(schema, at)
        finally:
            self._depth -= 1

    def _expand(self, key: Key, target: Any, siblings: dict[str, Any] | None, at: At) -> str:
        """The rule of a ``$ref`` target (with ``siblings`` merged in), expanded once however
        often it is referred to; a reference from inside its own expansion gets a rule name
        that is defined when the expansion is done."""
        if at.left is not None:
            at.left.add(key)
        if key in self._done:
            return self._done[key]
        if key in self._pending:
            if key not in self._placeholders:
                self._placeholders[key] = self.builder.reserve(at.name)
            return self._placeholders[key]
        self._pending.add(key)
        left: set[Key] = set()
        inner = At(at.path, at.name, left)
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
            self.builder.define(placeholder, result)
            result = placeholder
        self._done[key] = result
        return result

    def _refers_to_itself(self, key: Key) -> bool:
        seen: set[Key] = set()
        stack = list(self._edges.get(key, ()))
        while stack:
            current = stack.pop()
            if current == key:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(self._edges.get(current, ()))
        return False

    def _ref(self, schema: dict[str, Any], at: At) -> str:
        ref = schema["$ref"]
        target, where = self._resolve(ref, at.path)
        siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in ANNOTATIONS}
        if siblings:
            # The target and this site's own keywords together: a rule of its own.
            return self._expand((ref, dump_key(siblings)), target, siblings, at)
        name = sanitize(ref.rsplit("/", 1)[-1]) if ref != "#" else at.name
        return self._expand((ref, ""), target, None, At(where, name, at.left))

    def _plain(self, schema: dict[str, Any], at: At) -> str:
        what = describe(schema)
        for keyword in ANY_UNSUPPORTED:
            if keyword in schema and (keyword != "if" or "then" in schema or "else" in schema):
                self._cannot(keyword, what, at.path)
        nullable = schema.get("nullable") is True
        if "anyOf" in schema or "oneOf" in schema:
            return self._any_of(schema, at, nullable)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, at, nullable)
        types = self._types(schema, at)
        if types is None:
            return self.builder.primitive("json-value")
        names = []
        for type_ in types:
            typed_at = at if len(types) == 1 else At(at.path, f"{at.name}-{type_}", at.left)
            try:
                names.append(self._typed(type_, schema, typed_at))
            except Unsatisfiable:
                if len(types) == 1:
                    raise
        if not names:
            raise self._unsatisfiable(at.path, "no type in 'type' can be satisfied")
        return self._alternatives(names, at)

    def _alternatives(self, names: list[str], at: At) -> str:
        unique = list(dict.fromkeys(names))
        return unique[0] if len(unique) == 1 else self.builder.rule(at.name, " | ".join(unique))

    def _typed(self, type_: str, schema: dict[str, Any], at: At) -> str:
        if type_ == "object":
            return self._object(schema, at)
        if type_ == "array":
            return self._array(schema, at)
        if type_ == "string":
            return self._string(schema, at)
        if type_ == "integer":
            return self._integer(schema, at)
        if type_ == "number":
            for keyword in NUMBER_BOUNDS:
                if keyword in schema:
                    self._cannot(keyword, "a number", at.path)
            if schema.get("format", "float") not in ("float", "double"):
                self._cannot("format", "a number", at.path, f"the format {schema['format']!r}")
            return self.builder.primitive("number")
        return self.builder.primitive(type_)

    def _any_of(self, schema: dict[str, Any], at: At, nullable: bool) -> str:
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        if keyword == "anyOf" and "oneOf" in schema:
            self._cannot("oneOf", "a schema with 'anyOf'", at.path)
        branches = schema[keyword]
        if not isinstance(branches, list) or not branches:
            raise self._invalid(at.path, f"'{keyword}' must be a non-empty list")
        siblings = {
            k: v
            for k, v in schema.items()
            if k not in ("anyOf", "oneOf", "nullable", *ANY_UNSUPPORTED) and k not in ANNOTATIONS
        }
        names = []
        for index, branch in enumerate(branches):
            child = at.child(f".{keyword}[{index}]", str(index))
            try:
                names.append(self.convert(combine(branch, siblings), child))
            except Unsatisfiable:
                continue
        if nullable:
            names.append(self.builder.primitive("null"))
        if not names:
            raise self._unsatisfiable(at.path, f"no branch of '{keyword}' can be satisfied")
        return self._alternatives(names, at)

    def _enum(self, schema: dict[str, Any], at: At, nullable: bool) -> str:
        values: list[Any] = [schema["const"]] if "const" in schema else []
        if "enum" in schema:
            enum = schema["enum"]
            if not isinstance(enum, list):
                raise self._invalid(at.path, "'enum' must be a list")
            if "const" in schema:
                listed = {dump_key(v) for v in enum}
                values = [v for v in values if dump_key(v) in listed]
            else:
                values = list(enum)
        declared = self._types({"type": schema["type"]}, at) if "type" in schema else None
        kept: list[str] = []
        for value in values:
            kinds = value_kinds(value)
            if declared is not None and kinds.isdisjoint(declared):
                continue
            if self._fits(value, kinds, schema, at):
                try:
                    kept.append(self.builder.literal(dump(value)))
                except (TypeError, ValueError):
                    raise self._invalid(at.path, "an 'enum' value is not JSON") from None
        if nullable:
            kept.append(self.builder.literal("null"))
        if not kept:
            raise self._unsatisfiable(at.path, "no value of 'enum' or 'const' fits the schema")
        body = f"{group(list(dict.fromkeys(kept)))} space"
        self.builder.primitive("space")
        return self.builder.rule(at.name, body)

    def _fits(self, value: Any, kinds: frozenset[str], schema: dict[str, Any], at: At) -> bool:
        """Whether an enum ``value`` meets the other keywords of ``schema`` that apply to it."""
        for keyword, bound in schema.items():
            family = next((f for f, words in FAMILIES.items() if keyword in words), None)
            if family is None or family not in kinds:
                continue
            if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
                count = self._count(schema, keyword, at) or 0
                if (len(value) < count) if keyword.startswith("min") else (len(value) > count):
                    return False
            elif keyword in NUMBER_BOUNDS and is_number(bound) and not isinstance(value, bool):
                if not number_fits(keyword, bound, value):
                    return False
            elif keyword == "required" and isinstance(bound, list):
                if any(k not in value for k in bound):
                    return False
            else:
                self._cannot(keyword, f"{ARTICLES[family]} with 'enum'", at.path)
        return True

    # Numbers

    def _integer(self, schema: dict[str, Any], at: At) -> str:
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
        if format_ in INT_FORMATS:
            first, last = INT_FORMATS[format_]
            if format_ == "int32" or low is not None:
                low = max(low, first) if low is not None else first
            if format_ == "int32" or high is not None:
                high = min(high, last) if high is not None else last
        elif format_ is not None:
            self._cannot("format", "an integer", at.path, f"the format {format_!r}")
        if low is None and high is None:
            return self.builder.primitive("integer")
        if low is not None and high is not None and low > high:
            raise self._unsatisfiable(at.path, "no integer lies within its bounds")
        self.builder.primitive("space")
        return self.builder.rule(at.name, f"{group(int_range(low, high))} space")


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
