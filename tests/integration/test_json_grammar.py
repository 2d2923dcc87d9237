"""JSON schema grammars in llama.cpp with the real SmolLM2 model: every grammar compiles quickly,
llama.cpp accepts and refuses the texts the converter means it to, and what the model writes
under a grammar is, once finished, JSON valid against the schema."""

from __future__ import annotations

import ctypes
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from app.inference.json_grammar import json_object_grammar, json_schema_grammar

PARAM = "response_format.json_schema.schema"
SEEDS = range(8)


@pytest.fixture(scope="module")
def llm(model_file: Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(model_file), n_ctx=1024, n_threads=2, verbose=False)
    yield model
    model.close()


def grammar_of(schema: Any) -> str:
    grammar, unenforced = json_schema_grammar(schema, strict=True, param=PARAM)
    assert unenforced == []
    return grammar


def compile_seconds(llm: llama_cpp.Llama, grammar: str) -> float:
    """How long llama.cpp takes to compile ``grammar``; fails when it cannot."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    started = time.perf_counter()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    elapsed = time.perf_counter() - started
    assert sampler, grammar[:2000]
    llama_cpp.llama_sampler_free(sampler)
    return elapsed


def accepts(llm: llama_cpp.Llama, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write exactly ``text`` and stop."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=False):
            if not allowed(sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(sampler, llm.token_eos())
    finally:
        llama_cpp.llama_sampler_free(sampler)


def allowed(sampler: Any, token: int) -> bool:
    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(id=token, logit=0.0, p=0.0))
    candidates = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
    return bool(data[0].logit != -math.inf)


def raw_control_in_string(text: str) -> bool:
    """Whether a (possibly unfinished) JSON text has a raw control character inside a string."""
    inside = escaped = False
    for char in text:
        if inside and not escaped and ord(char) < 0x20:
            return True
        if escaped:
            escaped = False
        elif inside and char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
    return False


def generate(llm: llama_cpp.Llama, grammar: str, prompt: str, seed: int, max_tokens: int) -> Any:
    response = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}],
        grammar=LlamaGrammar.from_string(grammar, verbose=False),
        temperature=0.7,
        seed=seed,
        max_tokens=max_tokens,
    )
    assert isinstance(response, dict)  # not a stream
    return response["choices"][0]


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An object of ``schema``'s properties, all required and no others."""
    return {**schema, "required": list(schema["properties"]), "additionalProperties": False}


def obj(**properties: Any) -> dict[str, Any]:
    return closed({"type": "object", "properties": properties})


POEM = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
LIST = {
    "type": "object",
    "properties": {
        "value": {"type": "integer"},
        "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    },
    "required": ["value", "next"],
    "additionalProperties": False,
}
GENERATED: list[tuple[str, Any, str, int]] = [
    ("poem", POEM, "Write a poem of four lines about the sea.", 80),
    (
        "nested",
        obj(
            name={"type": "string", "maxLength": 20},
            age={"type": "integer", "minimum": 0, "maximum": 120},
            address=obj(city={"type": "string", "maxLength": 20}, country={"type": "string"}),
        ),
        "Describe a person, with an address, as JSON.",
        90,
    ),
    (
        "array-bounds",
        obj(
            colors={
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 2,
                "maxItems": 4,
            }
        ),
        "List some colors.",
        60,
    ),
    (
        "enum",
        obj(mood={"enum": ["happy", "sad", "angry"]}, score={"type": "integer", "maximum": 10}),
        "How do you feel today, and how much, from 1 to 10?",
        40,
    ),
    (
        "any-of",
        obj(
            answer={
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 100},
                    {"const": "unknown"},
                    {"type": "null"},
                ]
            }
        ),
        "How many moons does Mars have?",
        40,
    ),
    ("recursive", LIST, "Give the numbers 1, 2 and 3 as a linked list.", 100),
    (
        "integer-bounds",
        obj(
            year={"type": "integer", "minimum": 1900, "maximum": 2024},
            temperature={"type": "integer", "exclusiveMinimum": -41, "maximum": 50},
        ),
        "When was the Eiffel tower built, and how warm is Paris in May?",
        50,
    ),
    (
        "patterns",
        obj(
            code={"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
            phone={"type": "string", "pattern": r"^\+?[0-9 ]{7,12}$"},
            word={"type": "string", "pattern": r"^(?:[a-z]+|\d+)$"},
        ),
        "Make up a product code, a phone number and a short word.",
        70,
    ),
    (
        "formats",
        obj(
            day={"type": "string", "format": "date"},
            at={"type": "string", "format": "time"},
            id={"type": "string", "format": "uuid"},
        ),
        "Make up a meeting: its date, time and id.",
        120,
    ),
    (
        "optional-and-extra-keys",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 30},
                "year": {"type": "integer"},
                "genre": {"type": "string", "maxLength": 15},
            },
            "required": ["title"],
            "additionalProperties": {"type": ["string", "number"]},
        },
        "Tell me about a film.",
        70,
    ),
    (
        "tool-parameters",
        {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
            "additionalProperties": False,
        },
        "What is the weather like in Paris?",
        40,
    ),
    (
        "array-of-objects",
        {
            "type": "array",
            "items": obj(x={"type": "number"}, y={"type": "number"}),
            "minItems": 1,
            "maxItems": 3,
        },
        "Give two points on a plane.",
        60,
    ),
    (
        "all-of",
        {
            "allOf": [
                {"$ref": "#/definitions/named"},
                {"properties": {"done": {"type": "boolean"}}, "required": ["done"]},
            ],
            "definitions": {
                "named": {
                    "type": "object",
                    "properties": {"task": {"type": "string", "maxLength": 40}},
                    "required": ["task"],
                }
            },
        },
        "Give me a task for today and say whether it is done.",
        40,
    ),
    (
        "text-with-escapes",
        obj(french={"type": "string"}, path={"type": "string"}),
        "Write a French sentence with accents, and a Windows file path with backslashes.",
        70,
    ),
]


@pytest.mark.parametrize(
    ("schema", "prompt", "max_tokens"),
    [case[1:] for case in GENERATED],
    ids=[case[0] for case in GENERATED],
)
def test_what_the_model_writes_is_valid(
    llm: llama_cpp.Llama, schema: Any, prompt: str, max_tokens: int
) -> None:
    grammar = grammar_of(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    finished = 0
    for seed in SEEDS:
        choice = generate(llm, grammar, prompt, seed, max_tokens)
        text = choice["message"]["content"]
        assert not raw_control_in_string(text), text
        if choice["finish_reason"] == "stop":
            finished += 1
            value = json.loads(text)
            errors = [error.message for error in validator.iter_errors(value)]
            assert not errors, f"seed {seed}: {text!r}: {errors}"
    assert finished, "no generation finished: nothing was checked"


def test_the_sea_poem_is_json(llm: llama_cpp.Llama) -> None:
    # The issue: this request used to come back with a raw newline inside the poem string.
    choice = generate(llm, grammar_of(POEM), "Write a poem of four lines about the sea.", 3, 80)
    text = choice["message"]["content"]
    assert not raw_control_in_string(text), text
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text)["poem"], str)


def test_json_object_mode(llm: llama_cpp.Llama) -> None:
    grammar = json_object_grammar()
    finished = 0
    for seed in range(4):
        choice = generate(llm, grammar, "Describe a cat as a JSON object.", seed, 60)
        assert not raw_control_in_string(choice["message"]["content"])
        if choice["finish_reason"] == "stop":
            finished += 1
            assert isinstance(json.loads(choice["message"]["content"]), dict)
    assert finished


@pytest.mark.parametrize(
    ("schema", "text", "ok"),
    [
        (POEM, '{"poem": "a\\nb"}', True),
        (POEM, '{"poem": "a\nb"}', False),  # a raw newline
        (POEM, '{"poem": "tab\there"}', False),
        (POEM, '{"poem": "\\u00e9\\"\\\\\\/"}', True),
        (POEM, '{"poem": "\\ud83d\\ude00"}', False),  # surrogate escapes
        # additionalProperties absent: no key beyond the declared ones is written.
        (POEM, '{"poem": "x", "poems": 1}', False),
        ({**POEM, "additionalProperties": True}, '{"poem": "x", "poems": 1}', True),
        (POEM, '{"poem": "x", "poem": "y"}', False),  # a declared key again
        (POEM, '{"poem": "x"}\n' + " " * 20, True),
        (POEM, '{"poem": "x"}\n' + " " * 21, False),  # whitespace is bounded
        (POEM, '{"poem": 1}', False),
        ({"type": "number"}, "-0.5e-12", True),
        ({"type": "number"}, "1e99", True),
        ({"type": "number"}, "1e100", False),
        ({"type": "number"}, "0123", False),
        ({"type": "number"}, "9" * 15, True),
        ({"type": "number"}, "9" * 16, False),
        ({"type": "integer", "minimum": -5, "maximum": 120}, "120", True),
        ({"type": "integer", "minimum": -5, "maximum": 120}, "121", False),
        ({"type": "integer", "minimum": -5, "maximum": 120}, "-5", True),
        ({"type": "integer", "minimum": -5, "maximum": 120}, "-6", False),
        ({"type": "integer", "minimum": -5, "maximum": 120}, "007", False),
        ({"type": "string", "format": "date"}, '"2024-02-29"', True),
        ({"type": "string", "format": "date"}, '"2023-02-29"', False),
        ({"type": "string", "format": "date"}, '"2023-04-31"', False),
        ({"type": "string", "format": "date-time"}, '"2023-04-30T23:59:59.5+02:00"', True),
        ({"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"}, '"ABC-1234"', True),
        ({"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"}, '"ABC-123"', False),
        ({"type": "string", "pattern": r"o+"}, '"a foo bar"', True),
        ({"type": "string", "pattern": r"o+"}, '"a bar"', False),
        ({"type": "string", "pattern": r"^a.b$"}, '"a\\nb"', False),  # '.' is not a newline
        ({"type": "string", "pattern": r"^a.b$"}, '"a\\tb"', True),
        # Repetitions of what may be empty, which llama.cpp cannot take as they are.
        ({"type": "string", "pattern": r"^(a|)*(b?c*)+$"}, '"aabccbc"', True),
        ({"type": "string", "pattern": r"^(a|)*(b?c*)+$"}, '"ba"', False),
        ({"type": "array", "minItems": 2, "maxItems": 3}, "[1, 2]", True),
        ({"type": "array", "minItems": 2, "maxItems": 3}, "[1, 2, 3, 4]", False),
        (TREE, '{"name": "a", "children": [{"name": "b", "children": []}]}', True),
        (TREE, '{"name": "a", "children": [{"children": []}]}', False),
    ],
)
def test_llama_cpp_reads_the_grammar_as_meant(
    llm: llama_cpp.Llama, schema: Any, text: str, ok: bool
) -> None:
    assert accepts(llm, grammar_of(schema), text) is ok


def many_subschemas(count: int) -> dict[str, Any]:
    """An object of objects with ``count`` subschemas in all (check_schema_cost's limit)."""
    kinds: list[tuple[int, Any]] = [  # (subschemas in it, schema)
        (1, {"type": "string", "maxLength": 20}),
        (1, {"type": "integer", "minimum": -50, "maximum": 5000}),
        (1, {"type": "string", "pattern": r"^[a-z]+-\d{2}$"}),
        (2, {"type": "array", "items": {"type": "number"}, "maxItems": 4}),
        (3, {"anyOf": [{"type": "null"}, {"type": "string", "format": "date"}]}),
    ]
    objects: dict[str, Any] = {}
    total = 1
    while True:
        chosen = [kinds[(len(objects) + j) % len(kinds)] for j in range(7)]
        size = 1 + sum(n for n, _ in chosen)
        if total + size > count:
            return {"type": "object", "properties": objects}
        total += size
        properties = {f"f{len(objects)}_{j}": schema for j, (_, schema) in enumerate(chosen)}
        objects[f"o{len(objects)}"] = {"type": "object", "properties": properties}


LARGEST: list[Any] = [
    many_subschemas(2000),
    {  # optional keys, extra keys allowed: the largest grammar per byte of schema
        "type": "object",
        "properties": {
            f"object_number_{i}": {
                "type": "object",
                "properties": {
                    f"a_long_property_name_{j}_{i}": {"type": "string"} for j in range(7)
                },
            }
            for i in range(249)
        },
    },
    {"type": "array", "items": {"type": "string", "maxLength": 1000}, "minItems": 1000},
    {"type": "string", "pattern": "^(a{1000}|[^x]{999}){1000}$"},
    {"enum": [f"value number {i}" for i in range(1000)]},
    {"type": "object", "properties": {f"p{i:03d}": {"type": "integer"} for i in range(256)}},
    {
        "anyOf": [
            {"type": "integer", "minimum": i * 1000, "maximum": i * 1000 + 9} for i in range(128)
        ]
    },
]


@pytest.mark.parametrize("schema", [case[1] for case in GENERATED] + LARGEST)
def test_every_grammar_compiles_quickly(llm: llama_cpp.Llama, schema: Any) -> None:
    assert compile_seconds(llm, grammar_of(schema)) < 1.0
