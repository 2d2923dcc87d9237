"""A Responses request as the chat request that asks the same: its input items (with ids, as
they are listed and stored) become chat messages, its tools, ``tool_choice`` and ``text.format``
the chat fields."""

from __future__ import annotations

import msgspec

from app.errors import InvalidRequest
from app.openai.protocol_chat import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    Message,
    ResponseFormat,
)
from app.openai.protocol_responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputItem,
    InputText,
    MessageItem,
    OutputText,
    ReasoningItem,
    ResponseRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    item_id,
)
from app.openai.protocol_tools import (
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    NamedFunction,
    NamedToolChoice,
    ToolCallView,
    ToolChoice,
)


def with_ids(items: list[InputItem]) -> list[InputItem]:
    """The items, each with an id (as OpenAI lists them)."""
    prefixes = {MessageItem: "msg", FunctionCallItem: "fc", FunctionCallOutputItem: "fco"}
    result: list[InputItem] = []
    for item in items:
        if isinstance(item, ReasoningItem):
            continue
        if not isinstance(item.id, str):
            item = msgspec.structs.replace(item, id=item_id(prefixes[type(item)]))
        if isinstance(item, MessageItem) and isinstance(item.content, str):
            part = (
                OutputText(text=item.content)
                if item.role == "assistant"
                else InputText(text=item.content)
            )
            item = msgspec.structs.replace(item, content=[part])
        result.append(item)
    return result


def chat_messages_of(items: list[InputItem]) -> list[Message]:
    """The items as chat messages: consecutive calls join one assistant turn."""
    messages: list[Message] = []
    for index, item in enumerate(items):
        if isinstance(item, MessageItem):
            try:
                text = item.text()
            except ValueError as exc:
                raise InvalidRequest(
                    f"Invalid input item: {exc}.", param=f"input[{index}]"
                ) from None
            messages.append(Message(role=item.role, content=text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCallView(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                last.tool_calls.append(call)
            elif last is not None and last.role == "assistant" and last.tool_calls is None:
                last.tool_calls = [call]
            else:
                messages.append(Message(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(Message(role="tool", tool_call_id=item.call_id, content=item.text()))
    return messages


def chat_request(request: ResponseRequest, messages: list[Message]) -> ChatCompletionRequest:
    tools = []
    for index, tool in enumerate(request.tools or ()):
        if tool.type != "function":
            raise InvalidRequest(
                f"Tools of type {tool.type!r} are not supported; only 'function'.",
                param=f"tools[{index}].type",
            )
        if tool.name is None:
            raise InvalidRequest("A function tool needs a name.", param=f"tools[{index}].name")
        definition = FunctionDefinition(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters,
            strict=tool.strict,
        )
        tools.append(FunctionTool(type="function", function=definition))
    choice: ToolChoice | None
    if isinstance(request.tool_choice, FunctionChoice):
        choice = NamedToolChoice(
            type="function", function=NamedFunction(name=request.tool_choice.name)
        )
    else:
        choice = request.tool_choice
    response_format: ResponseFormat | None = None
    text_format = request.text.format if request.text else None
    if isinstance(text_format, TextFormatJsonObject):
        response_format = JsonObjectFormat()
    elif isinstance(text_format, TextFormatJsonSchema):
        spec = JsonSchemaSpec(
            name=text_format.name,
            schema=text_format.schema,
            strict=text_format.strict,
            description=text_format.description,
        )
        response_format = JsonSchemaFormat(json_schema=spec)
    if not messages:
        raise InvalidRequest("The input is empty.", param="input")
    return ChatCompletionRequest(
        model=request.model,
        messages=messages,
        tools=tools or None,
        tool_choice=choice,
        parallel_tool_calls=request.parallel_tool_calls,
        response_format=response_format,
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stream=request.stream,
    )
