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

The parts: ``gbnf`` (GBNF text and the shared JSON rules), ``integers`` (integer ranges),
``schema`` (keywords, errors, the converter's base), ``strings``, ``containers`` (objects and
arrays), ``all_of`` and ``converter`` (the rest, and the builder that is the entry point).
"""

from app.inference.json_grammar.converter import (
    GrammarBuilder,
    json_object_grammar,
    json_schema_grammar,
)
from app.inference.json_grammar.schema import UnsupportedSchema

__all__ = ["GrammarBuilder", "UnsupportedSchema", "json_object_grammar", "json_schema_grammar"]
