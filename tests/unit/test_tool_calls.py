"""Tool-call formats: detection from a template, reading calls from text whole or in pieces."""

from __future__ import annotations

import json

import pytest

from app.inference.tool_call_reader import ToolCallReader
from app.inference.tool_formats import GENERIC, HERMES, LLAMA3, MISTRAL, ToolFormat, detect

CALLS = [("get_weather", '{"city": "Paris", "days": [1, 2], "note": "a \\"b\\" }{"}'), ("f", "{}")]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for tool in tools %}<tool_call>{{ tool }}</tool_call>{% endfor %}", HERMES),
        ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", MISTRAL),
        ('<|python_tag|>{"name": ...}', LLAMA3),
        ("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}", GENERIC),
    ],
)
def test_a_templates_tool_format_is_read_from_its_text(template: str, expected: ToolFormat) -> None:
    assert detect(template) is expected


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("tool_format", [GENERIC, HERMES, MISTRAL, LLAMA3])
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_calls_are_read_back_whole_or_piece_by_piece(tool_format: ToolFormat, size: int) -> None:
    text = "Let me look that up. " + tool_format.written(CALLS)
    reader = ToolCallReader(tool_format)
    content = ""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for piece in pieces(text, size):
        released, deltas = reader.feed(piece)
        content += released
        for delta in deltas:
            if delta.name is not None:
                names[delta.index] = delta.name
            arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    content += reader.finish()
    assert content == "Let me look that up. "
    assert [names[i] for i in sorted(names)] == [name for name, _ in CALLS]
    assert [json.loads(arguments[i]) for i in sorted(arguments)] == [
        json.loads(args) for _, args in CALLS
    ]
    assert all(call.complete for call in reader.calls)


@pytest.mark.parametrize("size", [1, 2, 5])
def test_text_that_only_looks_like_an_opening_is_released_as_content(size: int) -> None:
    text = 'Use {"tool": 1} or {"tool_c as you like; then <tool and [TOOL_CALL'
    reader = ToolCallReader(GENERIC)
    content = "".join(reader.feed(piece)[0] for piece in pieces(text, size)) + reader.finish()
    assert content == text
    assert reader.calls == []


def test_an_opening_with_other_spacing_is_still_an_opening() -> None:
    reader = ToolCallReader(GENERIC)
    content, deltas = reader.feed('Sure.\n{ "tool_calls" :[ {"name": "f", "arguments": {}}]}')
    assert content == "Sure.\n"
    assert [d.name for d in deltas if d.name] == ["f"]
    assert reader.calls[0].arguments == "{}"


def test_calls_that_open_the_text_leave_no_content() -> None:
    reader = ToolCallReader(GENERIC)
    _, deltas = reader.feed('{"tool_calls": [{"name": "f", "arguments": {"x": 1}}]}')
    assert reader.content == ""
    assert [d.name for d in deltas if d.name] == ["f"]
    assert json.loads(reader.calls[0].arguments) == {"x": 1}


def test_a_cut_call_is_incomplete() -> None:
    reader = ToolCallReader(HERMES)
    reader.feed('<tool_call>\n{"name": "f", "arguments": {"x": "unfini')
    assert reader.calls[0].name == "f"
    assert not reader.calls[0].complete
    assert reader.calls[0].arguments == '{"x":"unfini'


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_arguments_come_out_compact_whole_or_piece_by_piece(size: int) -> None:
    arguments = '{\n  "a b": " x\\ty ",\n  "n": [1, 2]\n}'
    text = '{"tool_calls": [{"name": "f", "arguments": ' + arguments + "}]}"
    reader = ToolCallReader(GENERIC)
    streamed = ""
    for piece in pieces(text, size):
        streamed += "".join(delta.arguments for delta in reader.feed(piece)[1])
    assert streamed == reader.calls[0].arguments == '{"a b":" x\\ty ","n":[1,2]}'
    assert json.loads(streamed) == json.loads(arguments)


def test_the_generic_note_describes_each_tool_and_the_envelope() -> None:
    from app.inference.tool_formats import ToolSpec

    note = GENERIC.note(
        [ToolSpec(name="get_weather", description="Weather now.", parameters={"type": "object"})],
        required=True,
    )
    assert '{"tool_calls": [{"name": "<function name>"' in note
    assert '- get_weather: Weather now. Arguments (JSON schema): {"type": "object"}' in note
    assert "Call a function now." in note
