"""How a model writes tool calls: the format its chat template knows, and the grammar that holds
its calls to valid ones.

A template that renders tools itself shows its format in its text: Hermes/Qwen ``<tool_call>``
tags, Mistral's ``[TOOL_CALLS]``, Llama 3.x's bare JSON objects. Templates without one
(TinyLlama's Zephyr, SmolLM2's ChatML) get the generic format: a system note describes the tools
and asks for a JSON envelope, ``{"tool_calls": [{"name": ..., "arguments": {...}}]}``.

Every format writes its calls as JSON objects, the function's name first and its arguments
second, after an *opening*: the grammar makes the calls region exactly that, with the arguments
valid against the tool's schema. ``tool_call_reader`` reads the calls back out of the text.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from app.inference.json_grammar import GrammarBuilder

WS = None
"""An opening's atom for optional whitespace, as the grammar's ``tool-ws`` allows it."""
WS_GRAMMAR = '| " " | "\\n" [ \\t]{0,20}'
WS_REGEX = "(?: |\\n[ \\t]{0,20})?"
_ALPHANUMERIC = string.ascii_letters + string.digits
MAX_CALLS = 8
"""Calls in one reply at most: a small model may otherwise repeat a call until max_tokens."""


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """The JSON schema of its arguments (an object)."""
    strict: bool = False
    """Every constraint of ``parameters`` must be enforced (or the request is refused)."""


@dataclass(frozen=True)
class JsonAlternative:
    """A JSON answer the model may give instead of calls (``response_format`` with tools)."""

    schema: Any
    strict: bool
    param: str


@dataclass(frozen=True)
class ToolFormat:
    """One way of writing tool calls."""

    name: str
    native: bool
    """The chat template renders the tools and the calls itself."""
    opening: tuple[str | None, ...]
    """The literal pieces that open the calls region; ``WS`` for optional whitespace. It ends
    with a literal, so that where it ends is never in doubt."""
    opening_in_call: bool = False
    """The opening is the first call object's own start (Llama 3's ``{"name"``)."""
    arguments_key: str = "arguments"
    separator: str = ","
    closing: str = ""
    call_suffix: str = ""
    """Written after each call (Hermes's ``</tool_call>``), and ``opening`` before each."""
    short_ids: bool = False
    """Call ids are 9 letters and digits (Mistral's templates refuse others)."""

    def call_id(self) -> str:
        """A new id for a call the model made."""
        if self.short_ids:
            return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))
        return "call_" + secrets.token_hex(12)

    @property
    def opening_text(self) -> str:
        """The opening as the model is told to write it (a space after a colon)."""
        text = ""
        for piece in self.opening:
            if piece is None:
                text += " " if text.endswith(":") else ""
            else:
                text += piece
        return text

    @property
    def opening_regex(self) -> str:
        """A regular expression for the opening, with the whitespace the grammar allows in it:
        what the text is searched for, both to start the grammar and to read calls back."""
        return "".join(WS_REGEX if p is None else re.escape(p) for p in self.opening)

    def grammar(
        self,
        tools: Sequence[ToolSpec],
        *,
        params: Sequence[str],
        only: str | None = None,
        parallel: bool = True,
        or_json: JsonAlternative | None = None,
        after_opening: bool = False,
    ) -> tuple[str, list[str]]:
        """A GBNF grammar of a calls region and the schema keywords it cannot enforce.

        Args:
            tools: The functions that may be called.
            params: The request field of each tool's parameters, for errors.
            only: Call only the function of this name.
            parallel: Allow several calls (up to ``MAX_CALLS``), else exactly one.
            or_json: Allow, instead of calls, a JSON value of this schema.
            after_opening: The grammar starts right after the opening (which the model wrote
                freely; a lazy grammar), instead of with it.

        Raises:
            UnsupportedSchema: A strict schema it cannot enforce.
            SchemaTooCostly: A schema, or the whole grammar, beyond the limits.
        """
        builder = GrammarBuilder()
        ws = builder.rule("tool-ws", WS_GRAMMAR)
        tails = []  # each function's call after its opening '{ "name"'
        for index, tool in enumerate(tools):
            if only is not None and tool.name != only:
                continue
            arguments = builder.value(
                _object_schema(tool.parameters),
                strict=tool.strict,
                param=params[index],
                name=f"arguments-{index}",
            )
            name = builder.literal(json.dumps(tool.name))
            key = builder.literal(json.dumps(self.arguments_key))
            tails.append(
                builder.rule(
                    f"call-{index}-tail",
                    f'{ws} ":" {ws} {name} {ws} "," {ws} {key} {ws} ":" {ws} {arguments} {ws} "}}"',
                )
            )
        tail = builder.rule("call-tail", " | ".join(tails))
        call = builder.rule("call", f'"{{" {ws} "\\"name\\"" {tail}')
        opening = " ".join(ws if p is None else builder.literal(p) for p in self.opening)
        if self.call_suffix:  # each call framed: <tool_call> {...} </tool_call>
            rest = f"{ws} {call} {ws} {builder.literal(self.call_suffix)}"
            framed = builder.rule("framed-call", f"{opening} {rest}")
            more = f" ( {ws} {framed} ){{0,{MAX_CALLS - 1}}}" if parallel else ""
            first = rest if after_opening else framed
            body = first + more
        else:
            if self.opening_in_call:  # the opening ({"name") is the first call's own start
                first = tail if after_opening else call
            else:
                first = f"{ws} {call}" if after_opening else f"{opening} {ws} {call}"
            separator = builder.literal(self.separator)
            more = f" ( {ws} {separator} {ws} {call} ){{0,{MAX_CALLS - 1}}}" if parallel else ""
            closing = f" {ws} {builder.literal(self.closing)}" if self.closing else ""
            body = f"{first}{more}{closing}"
        root = builder.rule("tool-calls", body)
        if or_json is not None:
            value = builder.value(
                or_json.schema, strict=or_json.strict, param=or_json.param, name="answer"
            )
            root = builder.rule("calls-or-answer", f"{root} | {value}")
        return builder.grammar(root, param=params[0] if params else "tools"), builder.unenforced

    def note(self, tools: Sequence[ToolSpec], *, required: bool) -> str:
        """The system note that describes ``tools`` (for templates that cannot)."""
        lines = [
            "You can call functions. To call one, reply with only this JSON and nothing else:",
            '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}',
            "The result of a call comes back to you; then answer the user.",
        ]
        if required:
            lines.append("Call a function now.")
        lines.append("Functions:")
        for tool in tools:
            schema = json.dumps(tool.parameters or {"type": "object", "properties": {}})
            description = f": {tool.description}" if tool.description else ""
            lines.append(f"- {tool.name}{description} Arguments (JSON schema): {schema}")
        return "\n".join(lines)

    def written(self, calls: Sequence[tuple[str, str]]) -> str:
        """Calls ``(name, arguments JSON)`` written as the model writes them (for a history in
        a format the template cannot render itself)."""
        objects = [
            f'{{"name": {json.dumps(n)}, {json.dumps(self.arguments_key)}: {a}}}' for n, a in calls
        ]
        if self.call_suffix:
            return "\n".join(f"{self.opening_text}\n{o}\n{self.call_suffix}" for o in objects)
        if self.opening_in_call:
            return f"{self.separator} ".join(objects)
        return self.opening_text + f"{self.separator} ".join(objects) + self.closing


def _object_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """``parameters`` narrowed to objects: arguments are always a JSON object, whatever else
    the schema would allow (no ``type``, ``nullable``, a list of types)."""
    if not parameters:
        return {"type": "object", "properties": {}}
    narrowed = {**parameters, "type": "object"}
    narrowed.pop("nullable", None)
    return narrowed


GENERIC = ToolFormat(
    name="generic",
    native=False,
    opening=("{", WS, '"tool_calls"', WS, ":", WS, "["),
    closing="]}",
)
HERMES = ToolFormat(
    name="hermes",
    native=True,
    opening=("<tool_call>",),
    separator="",
    call_suffix="</tool_call>",
)
MISTRAL = ToolFormat(
    name="mistral", native=True, opening=("[TOOL_CALLS]", WS, "["), closing="]", short_ids=True
)
LLAMA3 = ToolFormat(
    name="llama3",
    native=True,
    opening=("{", WS, '"name"'),
    opening_in_call=True,
    arguments_key="parameters",
    separator=";",
)


def detect(template: str) -> ToolFormat:
    """The tool-call format a chat template knows, from its text; ``GENERIC`` if none."""
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return LLAMA3
    return GENERIC
