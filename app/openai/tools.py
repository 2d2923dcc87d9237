"""A chat request's tools, read and checked: which functions, which ``tool_choice``, and the
conversation with its calls and their results, as the engine takes them.

Everything a client can get wrong here (a ``tool_choice`` naming no tool, a ``tool`` turn that
answers no call, arguments that are not JSON) is a 400 naming the field.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Literal

from app.errors import InvalidRequest
from app.inference.engine import ChatMessage, ToolCall
from app.inference.tool_formats import ToolSpec
from app.openai.protocol_chat import ChatCompletionRequest, Message
from app.openai.protocol_tools import (
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
)

Choice = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    """What a request allows the model to call, and how."""

    tools: tuple[ToolSpec, ...] = ()
    choice: Choice = "none"
    params: tuple[str, ...] = ()
    """The request field of each tool's parameters (for errors)."""
    name: str | None = None
    """The function a ``named`` choice calls."""
    parallel: bool = True
    legacy: bool = False
    """Asked with ``functions``: answered with ``function_call``."""

    @property
    def calling(self) -> bool:
        """Whether a call may come."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        """Whether a call must come (the whole reply is calls)."""
        return self.choice in ("required", "named")


def tool_plan(request: ChatCompletionRequest) -> ToolPlan:
    """The request's tools and choice, checked."""
    if request.tools is not None and request.functions is not None:
        raise _refused("Send either tools or the legacy functions, not both.", "functions")
    if request.functions is not None:
        return _legacy_plan(request)
    definitions = [tool.function for tool in request.tools or ()]
    tools = tuple(_spec(d, f"tools[{i}].function") for i, d in enumerate(definitions))
    params = tuple(f"tools[{i}].function.parameters" for i in range(len(tools)))
    _distinct(tools, "tools")
    choice = request.tool_choice
    if choice not in (None, "none", "auto") and not tools:
        raise _refused("This tool_choice needs tools to choose from.", "tool_choice")
    parallel = request.parallel_tool_calls is not False
    if isinstance(choice, NamedToolChoice):
        _known(choice.function.name, tools, "tool_choice.function.name")
        return ToolPlan(tools, "named", params, choice.function.name, parallel)
    return ToolPlan(tools, choice or ("auto" if tools else "none"), params, None, parallel)


def _legacy_plan(request: ChatCompletionRequest) -> ToolPlan:
    definitions = request.functions or []
    tools = tuple(_spec(d, f"functions[{i}]") for i, d in enumerate(definitions))
    params = tuple(f"functions[{i}].parameters" for i in range(len(tools)))
    _distinct(tools, "functions")
    choice = request.function_call
    if isinstance(choice, NamedFunction):
        _known(choice.name, tools, "function_call.name")
        return ToolPlan(tools, "named", params, choice.name, parallel=False, legacy=True)
    return ToolPlan(tools, choice or "auto", params, None, parallel=False, legacy=True)


def _spec(definition: FunctionDefinition, param: str) -> ToolSpec:
    parameters = definition.parameters
    declared = (parameters or {}).get("type", "object")
    if "object" not in (declared if isinstance(declared, list) else [declared]):
        raise _refused(
            "A function's parameters must be the JSON schema of an object.", f"{param}.parameters"
        )
    return ToolSpec(
        name=definition.name,
        description=definition.description,
        parameters=parameters,
        strict=bool(definition.strict),
    )


def _distinct(tools: tuple[ToolSpec, ...], param: str) -> None:
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.name in seen:
            raise _refused(
                f"Two functions are named {tool.name!r}.", f"{param}[{index}].function.name"
            )
        seen.add(tool.name)


def _known(name: str, tools: tuple[ToolSpec, ...], param: str) -> None:
    if name not in {tool.name for tool in tools}:
        raise _refused(f"There is no function named {name!r} in the request.", param)


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """The conversation as the engine takes it; a 400 for a call or result that does not fit."""
    converted: list[ChatMessage] = []
    calls: dict[str, str] = {}  # call id -> function name, for the results that follow
    legacy_calls: dict[str, str] = {}  # function name -> synthetic call id
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = "system" if message.role == "developer" else message.role
        if role == "tool":
            if not message.tool_call_id:
                raise _refused("A tool message needs its tool_call_id.", f"{where}.tool_call_id")
            if message.tool_call_id not in calls:
                raise _refused(
                    f"A tool message must answer a call of an earlier assistant message; no call "
                    f"has the id {message.tool_call_id!r}.",
                    f"{where}.tool_call_id",
                )
            name = calls[message.tool_call_id]
            converted.append(
                ChatMessage(
                    "tool", message.text() or "", tool_call_id=message.tool_call_id, name=name
                )
            )
            continue
        if role == "function":
            if not message.name or message.name not in legacy_calls:
                raise _refused(
                    "A function message must name the function an earlier assistant message "
                    "called.",
                    f"{where}.name",
                )
            call_id = legacy_calls[message.name]
            converted.append(
                ChatMessage("tool", message.text() or "", tool_call_id=call_id, name=message.name)
            )
            continue
        tool_calls: list[ToolCall] = []
        if message.tool_calls or message.function_call:
            if role != "assistant":
                raise _refused("Only assistant messages carry tool calls.", f"{where}.tool_calls")
            for j, call in enumerate(message.tool_calls or []):
                _arguments(call.function.arguments, f"{where}.tool_calls[{j}].function.arguments")
                tool_calls.append(
                    ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
                )
                calls[call.id] = call.function.name
            if message.function_call is not None:
                call_id = secrets.token_hex(5)[:9]  # 9 letters and digits: any template takes it
                _arguments(message.function_call.arguments, f"{where}.function_call.arguments")
                tool_calls.append(
                    ToolCall(
                        id=call_id,
                        name=message.function_call.name,
                        arguments=message.function_call.arguments,
                    )
                )
                calls[call_id] = message.function_call.name
                legacy_calls[message.function_call.name] = call_id
        # Templates concatenate contents: only a turn of calls may have none.
        content = message.text() if tool_calls else message.text() or ""
        converted.append(ChatMessage(role, content, tool_calls=tuple(tool_calls)))
    return converted


def _arguments(text: str, param: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        raise _refused("A tool call's arguments must be a JSON object.", param) from None
    except RecursionError:
        raise _refused("A tool call's arguments nest too deeply.", param) from None
    if not isinstance(value, dict):
        raise _refused("A tool call's arguments must be a JSON object.", param)


def _refused(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)
