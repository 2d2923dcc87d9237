"""``allOf`` as one schema: the conjunction flattened (``$ref``s resolved) and merged keyword by
keyword, so that the converter writes one rule for what every part allows."""

from __future__ import annotations

from typing import Any

from app.inference.json_grammar.schema import (
    ANNOTATIONS,
    LOWER_BOUNDS,
    UPPER_BOUNDS,
    At,
    SchemaRules,
    UnsupportedSchema,
    describe,
    dump_key,
    dump_type,
    is_number,
)


class AllOfRules(SchemaRules):
    """Merges the parts of an ``allOf``."""

    def _merge_all(self, schema: dict[str, Any], at: At) -> dict[str, Any]:
        parts = self._flatten(schema, at.path, frozenset())
        merged: dict[str, Any] = {}
        for part in parts:
            merged = self._merge(merged, part, at)
        return merged

    def _flatten(self, schema: Any, path: str, seen: frozenset[str]) -> list[dict[str, Any]]:
        """The schemas that ``schema`` is the conjunction of, ``$ref``s and ``allOf``s
        resolved, each without annotations."""
        self._spend()
        if schema is True:
            return []
        if schema is False:
            raise self._unsatisfiable(path, "it is false")
        if not isinstance(schema, dict):
            raise self._invalid(
                path, f"a schema must be an object or a boolean, not {dump_type(schema)}"
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
            k: v for k, v in schema.items() if k not in ("$ref", "allOf") and k not in ANNOTATIONS
        }
        if isinstance(own.get("items"), list):  # the old form of prefixItems
            own["prefixItems"] = own.pop("items")
            if "additionalItems" in own:
                own["items"] = own.pop("additionalItems")
        if "const" in own:  # as an enum, which merges by intersection
            const = own.pop("const")
            enum = own.get("enum")
            listed = [const] if not isinstance(enum, list) else enum
            own["enum"] = [v for v in listed if dump_key(v) == dump_key(const)]
        if own:
            parts.append(own)
        return parts

    def _merge(self, a: dict[str, Any], b: dict[str, Any], at: At) -> dict[str, Any]:
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
                allowed = {dump_key(v) for v in value}
                out[keyword] = [v for v in mine if dump_key(v) in allowed]
            elif keyword == "additionalProperties":
                out[keyword] = conjunction(mine, value)
            elif keyword == "nullable":
                out[keyword] = mine is True and value is True
            elif keyword in LOWER_BOUNDS and is_number(mine) and is_number(value):
                out[keyword] = max(mine, value)
            elif keyword in UPPER_BOUNDS and is_number(mine) and is_number(value):
                out[keyword] = min(mine, value)
            elif keyword in ("properties", "prefixItems", "items"):
                pass  # below, with what applies to the rest
            elif dump_key(mine) != dump_key(value):
                self._cannot("allOf", describe(out), at.path, f"conflicting values of '{keyword}'")
        if isinstance(a.get("properties"), dict) or isinstance(b.get("properties"), dict):
            mine, theirs = a.get("properties", {}), b.get("properties", {})
            if isinstance(mine, dict) and isinstance(theirs, dict):
                # A key that one side does not declare must meet that side's
                # additionalProperties.
                extra_a = a.get("additionalProperties", True)
                extra_b = b.get("additionalProperties", True)
                out["properties"] = {
                    key: conjunction(mine.get(key, extra_a), theirs.get(key, extra_b))
                    for key in dict.fromkeys([*mine, *theirs])
                }
            else:
                self._cannot("allOf", describe(out), at.path, "'properties' is not an object")
        if {"prefixItems", "items"} & {*a, *b}:
            # Likewise, an item past one side's prefixItems must meet that side's items.
            prefix_a, prefix_b = a.get("prefixItems", []), b.get("prefixItems", [])
            items_a, items_b = a.get("items", True), b.get("items", True)
            if isinstance(prefix_a, list) and isinstance(prefix_b, list):
                out["prefixItems"] = [
                    conjunction(
                        prefix_a[i] if i < len(prefix_a) else items_a,
                        prefix_b[i] if i < len(prefix_b) else items_b,
                    )
                    for i in range(max(len(prefix_a), len(prefix_b)))
                ]
                out["items"] = conjunction(items_a, items_b)
            else:
                self._cannot("allOf", describe(out), at.path, "'prefixItems' is not a list")
        return out

    def _merge_types(self, mine: Any, theirs: Any, at: At) -> list[str]:
        first = self._types({"type": mine}, at) or []
        second = self._types({"type": theirs}, at) or []
        both = [t for t in first if t in second]
        if {"integer", "number"} <= {*first, *second}:  # one side has each
            both.append("integer")
        if not both:
            raise self._unsatisfiable(at.path, "the types in 'allOf' have nothing in common")
        return list(dict.fromkeys(both))


def combine(branch: Any, siblings: dict[str, Any]) -> Any:
    """An ``anyOf`` branch with the keywords beside the ``anyOf``, which apply to it as well."""
    if not siblings or branch is False:
        return branch
    if branch is True:
        return siblings
    if (
        isinstance(branch, dict)
        and set(branch) - ANNOTATIONS == {"$ref"}
        and "$ref" not in siblings
    ):
        return {"$ref": branch["$ref"], **siblings}
    return {"allOf": [branch, siblings]}


def conjunction(a: Any, b: Any) -> Any:
    if a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return {"allOf": [a, b]}
