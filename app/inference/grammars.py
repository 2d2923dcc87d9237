"""GBNF grammars that make llama.cpp's output valid JSON (llama-cpp-python's converters)."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from app.errors import InvalidRequest


def json_object_grammar() -> str:
    """Any JSON object (llama.cpp's json.gbnf, whose root is an object)."""
    return str(JSON_GBNF)


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """JSON that matches ``schema``; raises ``InvalidRequest`` for a schema it cannot express."""
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises many kinds for schemas it cannot handle
        raise InvalidRequest(
            f"The JSON schema cannot be enforced: {exc}", param="response_format.json_schema"
        ) from None
