"""Tool calling's part of ``/v1/chat/completions``: tool definitions, ``tool_choice``, the calls
in an assistant's turn (given in the history, returned, and streamed), and the legacy
``functions``/``function_call`` forms, in OpenAI's field names and order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

FunctionName = Annotated[
    str,
    Meta(
        pattern=r"^[a-zA-Z0-9_-]{1,64}$(?!\n)",
        description="Letters, digits, underscores and dashes, at most 64.",
    ),
]


class FunctionDefinition(msgspec.Struct, kw_only=True):
    """A function the model may call."""

    name: FunctionName
    description: str | None = None
    parameters: Annotated[
        dict[str, Any] | None,
        Meta(description="The JSON schema of the arguments (an object)."),
    ] = None
    strict: Annotated[
        bool | None,
        Meta(
            description="true: every constraint of `parameters` is enforced, or the request is "
            "refused naming the one that cannot be."
        ),
    ] = None


class FunctionTool(msgspec.Struct, kw_only=True):
    """``tools[]``: a function tool (the only kind there is for chat completions)."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(msgspec.Struct, kw_only=True):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: call this one."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


class FunctionCall(msgspec.Struct, kw_only=True):
    """A call's function and its arguments (a JSON text)."""

    name: str
    arguments: str


class ToolCallView(msgspec.Struct, kw_only=True):
    """A tool call, in the history an assistant turn carries and in answers."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(msgspec.Struct, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ToolCallDelta(msgspec.Struct, kw_only=True):
    """What a stream chunk adds to a tool call: its id, type and name first, then pieces of
    its arguments."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionCallDelta
