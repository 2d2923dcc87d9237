"""Object and array schemas as GBNF: properties in order with required keys, extra keys
that never repeat a declared one, items, prefix items and their counts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.inference.json_grammar.gbnf import SHORT_ESCAPES, atom, char_class, json_char, repeat, seq
from app.inference.json_grammar.schema import (
    ARRAY_UNSUPPORTED,
    OBJECT_UNSUPPORTED,
    At,
    SchemaRules,
    Unsatisfiable,
    dump,
    path_key,
)
from app.inference.regex_subset import SPECIAL, UNIVERSE, codes, contains, norm, subtract

# Characters of declared keys that an extra key may share before it must differ.
_KEY_DEPTH = 16


class ContainerRules(SchemaRules):
    """The rules of object and array values."""

    def _object(self, schema: dict[str, Any], at: At) -> str:
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
        for keyword in OBJECT_UNSUPPORTED:
            if keyword in schema and not (keyword == "minProperties" and schema[keyword] == 0):
                self._cannot(keyword, "an object", at.path)
        if not properties and not required and extra is True:
            return self.builder.primitive("json-object")
        needed = dict.fromkeys(required)
        members: list[tuple[str, bool]] = []  # (GBNF of "key": value, required)
        declared: list[str] = []
        for key, subschema in properties.items():
            declared.append(key)
            child = at.child(f".properties{path_key(key)}", key, guarded=True)
            try:
                value = self.convert(subschema, child)
            except Unsatisfiable:
                if key in needed and subschema is False:
                    raise self._unsatisfiable(
                        at.path, f"the required key {key!r} cannot be present"
                    ) from None
                if key in needed:
                    raise
                continue  # never present
            members.append(
                (f"{self.builder.literal(dump(key) + ':')} space {value}", key in needed)
            )
        extra_value: str | None = None
        if extra is not False:
            try:
                extra_value = self.convert(
                    extra, at.child(".additionalProperties", "additional", guarded=True)
                )
            except Unsatisfiable:
                extra_value = None
        for key in needed:
            if key not in properties:
                if extra_value is None:
                    raise self._unsatisfiable(
                        at.path, f"the required key {key!r} cannot be present"
                    )
                declared.append(key)
                members.append(
                    (f"{self.builder.literal(dump(key) + ':')} space {extra_value}", True)
                )
        self.builder.primitive("space")
        extra_member = None
        if extra_value is not None:
            key = self._key_except(declared, at) if declared else self.builder.primitive("string")
            extra_member = f'{key} ":" space {extra_value}'
        members_text = self._members(members, extra_member, at)
        return self.builder.rule(at.name, seq('"{" space', members_text, '"}" space'))

    def _members(self, members: list[tuple[str, bool]], extra: str | None, at: At) -> str:
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
            start = seq(members[first_required][0], after(first_required + 1))
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
            choice = seq(member, rest_name)
            from_text = f"{choice} | {from_text}" if from_text else f"({choice})?"
            if index == 0:
                break
            from_name = self.builder.rule(f"{at.name}-from", from_text)
            rest_text = seq(f'("," space {member})?', rest_name)
            rest_name = self.builder.rule(f"{at.name}-rest", rest_text)
            from_text = from_name
        return atom(from_text)

    def _key_except(self, keys: list[str], at: At) -> str:
        """A JSON string (quoted) that is none of ``keys``: a duplicate key would override a
        declared property's value with one its schema does not allow.

        One rule per node of the keys' trie, down to ``_KEY_DEPTH`` characters: a key that
        shares more than that with a declared one is refused too, which keeps the grammar
        small. Where a key may still be spelt, characters have one spelling only (no \\u
        escapes), so that each key has one spelling to exclude.
        """
        tail = self.builder.rule("key-tail", 'char* "\\""')
        self.builder.primitive("char")
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
                if c and (c in SHORT_ESCAPES or not contains(SPECIAL, ord(c)))
            }
            options = [] if "" in node else ['"\\""']
            options.append(self._key_other(children, tail))
            if depth < _KEY_DEPTH:
                options.extend(
                    f"{self.builder.literal(json_char(c))} {names[id(child)]}"
                    for c, child in sorted(children.items())
                )
            names[id(node)] = self.builder.rule(
                f"{at.name}-key" if node is trie else "key", " | ".join(options)
            )
        return f'"\\"" {names[id(trie)]}'

    def _key_other(self, taken: Iterable[str], tail: str) -> str:
        """A rule: a key character other than ``taken``, then the rest of the key."""
        raw = subtract(UNIVERSE, norm([*SPECIAL, *codes(taken)]))
        options = [f"{char_class(raw)} {tail}"]
        letters = [e[1] for c, e in SHORT_ESCAPES.items() if c not in taken]
        if letters:
            options.append(f'"\\\\" {char_class(codes(letters))} {tail}')
        return self.builder.rule("key-other", " | ".join(options))

    # Arrays

    def _array(self, schema: dict[str, Any], at: At) -> str:
        items = schema.get("items")
        prefix: Any
        if isinstance(items, list):  # the old form of prefixItems
            prefix, rest = items, schema.get("additionalItems", True)
        else:
            prefix, rest = schema.get("prefixItems", []), True if items is None else items
        if not isinstance(prefix, list):
            raise self._invalid(at.path, "'prefixItems' must be a list")
        for keyword in ARRAY_UNSUPPORTED:
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
            except Unsatisfiable:
                high = index  # no item can be at this position, nor any after it
                break
        rest_name: str | None = None
        if len(item_names) == len(prefix) and (high is None or high > len(prefix)):
            try:
                rest_name = self.convert(rest, at.child(".items", "item", guarded=True))
            except Unsatisfiable:
                rest_name = None
            if rest_name is None:
                high = len(prefix)
        if high is not None and high < low:
            raise self._unsatisfiable(at.path, "it cannot have 'minItems' items")
        self.builder.primitive("space")
        count = len(item_names)
        tail = ""
        if rest_name is not None:
            more = None if high is None else high - count
            tail = repeat(f'("," space {rest_name})', max(low - count, 0), more)
        for index in range(count - 1, 0, -1):
            step = seq('"," space', item_names[index], tail)
            tail = step if index < low else f"({step})?"
        if count:
            elements = seq(item_names[0], tail)
        elif rest_name is not None:
            more = None if high is None else high - 1
            following = repeat(f'("," space {rest_name})', max(low - 1, 0), more)
            elements = seq(rest_name, following)
        else:
            elements = ""
        if elements and low == 0:
            elements = f"({elements})?"
        return self.builder.rule(at.name, seq('"[" space', elements, '"]" space'))
