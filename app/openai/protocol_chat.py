"""``/v1/chat/completions``'s request, response and stream chunks, in OpenAI's field names and
order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.errors import InvalidRequest
from app.openai.protocol import MAX_MESSAGES, MAX_TOKENS, MAX_TOP_LOGPROBS, Sampling, Usage
from app.openai.protocol_tools import (
    FunctionCall,
    FunctionCallChoice,
    FunctionCallDelta,
    FunctionDefinition,
    FunctionTool,
    ToolCallDelta,
    ToolCallView,
    ToolChoice,
)

MAX_TOOLS = 128

ChatFinishReason = Annotated[
    Literal["stop", "length", "tool_calls", "function_call"],
    Meta(
        description="'tool_calls' (or legacy 'function_call') when the reply is calls, 'length' "
        "when max_tokens or the context cut it, else 'stop'."
    ),
]


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    """A text part of a message's content (the only kind this service reads)."""

    text: str


class Message(msgspec.Struct, kw_only=True):
    """One turn of the conversation: ``tool`` turns answer an assistant turn's ``tool_calls``
    (``function`` turns, its legacy ``function_call``)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallView] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None

    def text(self) -> str | None:
        """The content as one string (None when there is none)."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class TextFormat(msgspec.Struct, tag="text", tag_field="type"):
    """Free text (the default)."""


class JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type"):
    """Any valid JSON object."""


class JsonSchemaSpec(msgspec.Struct, kw_only=True):
    """``response_format.json_schema``."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    """JSON matching a schema."""

    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class ChatCompletionRequest(Sampling, kw_only=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_completion_tokens: (
        Annotated[
            int,
            Meta(
                ge=1, le=MAX_TOKENS, description="Most tokens to generate (wins over max_tokens)."
            ),
        ]
        | None
    ) = None
    response_format: Annotated[
        ResponseFormat | None,
        Meta(description="`json_object` or `json_schema`: output enforced with a grammar."),
    ] = None
    tools: Annotated[
        Annotated[list[FunctionTool], Meta(max_length=MAX_TOOLS)] | None,
        Meta(description="Functions the model may call."),
    ] = None
    tool_choice: Annotated[
        ToolChoice | None,
        Meta(
            description="`auto` (the default with tools): the model may answer or call; "
            "`required`: it calls one or more; a named function: it calls that one; `none`: no "
            "call."
        ),
    ] = None
    parallel_tool_calls: Annotated[
        bool | None, Meta(description="false: at most one call (default true).")
    ] = None
    functions: Annotated[
        Annotated[list[FunctionDefinition], Meta(max_length=MAX_TOOLS)] | None,
        Meta(description="Legacy form of `tools`."),
    ] = None
    function_call: Annotated[
        FunctionCallChoice | None, Meta(description="Legacy form of `tool_choice`.")
    ] = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    web_search_options: dict[str, Any] | None = None

    def _limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def check_supported(self) -> None:
        """Refuses what would change the result but is not supported."""
        if self.web_search_options is not None:
            raise InvalidRequest("Web search is not supported.", param="web_search_options")
        if self.audio is not None or (self.modalities and set(self.modalities) != {"text"}):
            raise InvalidRequest("Only text output is supported.", param="modalities")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true.", param="top_logprobs")

    def top_logprob_count(self) -> int | None:
        """None without logprobs, else how many alternatives each token lists."""
        return (self.top_logprobs or 0) if self.logprobs else None


class TopLogprobView(msgspec.Struct, kw_only=True):
    """A candidate token."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobView(msgspec.Struct, kw_only=True):
    """A generated token with its log probability and the likeliest alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobView]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    """``choices[].logprobs`` of a chat completion."""

    content: list[TokenLogprobView] | None


class AssistantMessage(msgspec.Struct, kw_only=True):
    """The model's reply: text, tool calls, or text then calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallView] | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET


class ChatChoice(msgspec.Struct, kw_only=True):
    """One reply."""

    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason


class ChatCompletion(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/chat/completions``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, kw_only=True):
    """What a stream chunk adds to a reply."""

    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET
    function_call: FunctionCallDelta | UnsetType = UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    """One reply's part in a stream chunk."""

    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET
