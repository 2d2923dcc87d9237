"""Anthropic's Messages API (``/v1/messages``): the request, the message, the stream events and
the error, in Anthropic's field names and order.

Requests accept fields they do not list (clients send extras such as ``metadata`` or
``service_tier``); a listed field that would change the result and cannot be honoured is refused
with a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.openai.protocol import MAX_MESSAGES, MAX_TOKENS, StopText
from app.openai.protocol_chat import MAX_TOOLS
from app.openai.protocol_tools import FunctionName

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct, tag="error", tag_field="type"):
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``."""

    error: AnthropicErrorBody


class TextBlock(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    """Text, in a message or a tool result."""

    text: str
    citations: list[dict[str, Any]] | None = None
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    """A call the assistant made."""

    id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: FunctionName
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    """The result of a call, in a user message."""

    tool_use_id: Annotated[str, Meta(min_length=1, max_length=256)]
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n\n".join(block.text for block in self.content)
        return self.content or ""


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", kw_only=True):
    """An image (refused: the model reads text only)."""

    source: dict[str, Any] | None = None


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type", kw_only=True):
    """A document (refused: the model reads text only)."""

    source: dict[str, Any] | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", kw_only=True):
    """Earlier thinking an assistant turn carries back (not shown to this model)."""

    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(
    msgspec.Struct, tag="redacted_thinking", tag_field="type", kw_only=True
):
    """Redacted earlier thinking (skipped, as thinking is)."""

    data: str = ""


ContentBlock = (
    TextBlock
    | ToolUseBlock
    | ToolResultBlock
    | ImageBlock
    | DocumentBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class MessageParam(msgspec.Struct, kw_only=True):
    """One turn: ``user`` (text, tool results), ``assistant`` (text, tool uses), or ``system``
    (text: instructions in the middle of the conversation)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(msgspec.Struct, kw_only=True):
    """A client tool the model may use."""

    name: FunctionName
    description: str | None = None
    input_schema: Annotated[
        dict[str, Any], Meta(description="The JSON schema of the tool's input (an object).")
    ]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceAuto(msgspec.Struct, tag="auto", tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(msgspec.Struct, tag="any", tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(msgspec.Struct, tag="tool", tag_field="type", kw_only=True):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(msgspec.Struct, tag="none", tag_field="type", kw_only=True):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/messages/count_tokens``: what the prompt of such a request would cost."""

    model: Annotated[str, Meta(description="The id of a model from /v1/models.")]
    messages: Annotated[list[MessageParam], Meta(min_length=1, max_length=MAX_MESSAGES)]
    system: str | list[TextBlock] | None = None
    tools: Annotated[list[Tool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


class JsonOutputFormat(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True):
    """Output that is JSON of ``schema`` (held to it by a grammar)."""

    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, kw_only=True):
    """``output_config``: ``format`` is enforced; ``effort`` is accepted and has no effect on
    a model that does not think."""

    format: JsonOutputFormat | None = None
    effort: str | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """``POST /v1/messages``."""

    max_tokens: Annotated[
        int, Meta(ge=1, le=MAX_TOKENS, description="Most tokens to generate (required).")
    ]
    stop_sequences: Annotated[list[StopText], Meta(max_length=4)] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


class CountTokensResponse(msgspec.Struct, kw_only=True):
    input_tokens: int


class TextOut(msgspec.Struct, tag="text", tag_field="type", kw_only=True):
    text: str


class ToolUseOut(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/messages``."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


# --- streaming ---------------------------------------------------------------------------------


class MessageStart(msgspec.Struct, tag="message_start", tag_field="type", kw_only=True):
    message: Message


class Ping(msgspec.Struct, tag="ping", tag_field="type", kw_only=True):
    pass


class ContentBlockStart(msgspec.Struct, tag="content_block_start", tag_field="type", kw_only=True):
    index: int
    content_block: TextOut | ToolUseOut


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type", kw_only=True):
    text: str


class InputJsonDelta(msgspec.Struct, tag="input_json_delta", tag_field="type", kw_only=True):
    partial_json: str


class ContentBlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type", kw_only=True):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type", kw_only=True):
    index: int


class StopDelta(msgspec.Struct, kw_only=True):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class OutputUsage(msgspec.Struct, kw_only=True):
    output_tokens: int
    input_tokens: int | UnsetType = UNSET


class MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type", kw_only=True):
    delta: StopDelta
    usage: OutputUsage


class MessageStop(msgspec.Struct, tag="message_stop", tag_field="type", kw_only=True):
    pass


StreamEvent = (
    MessageStart
    | Ping
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | AnthropicError
)


def event(payload: StreamEvent) -> bytes:
    """One server-sent event, named as its ``type``."""
    name = type(payload).__struct_config__.tag
    return b"event: " + str(name).encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"
