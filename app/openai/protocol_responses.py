"""``/v1/responses``: the request, its input items, the response object and the stream events, in
OpenAI's field names and order.

Input items are read one by one (``input_items``), so that a bad one is a 400 naming
``input[i]``; clients send back output items with fields of their own (``status``,
``annotations``), which are accepted.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.errors import InvalidRequest
from app.openai.protocol import MAX_MESSAGES, MAX_TOKENS, Seed, Temperature, TopP
from app.openai.protocol_chat import MAX_TOOLS
from app.openai.protocol_tools import FunctionName
from app.validation import describe


def item_id(prefix: str) -> str:
    """An id of a response or an item: ``resp_…``, ``msg_…``, ``fc_…``."""
    return f"{prefix}_{secrets.token_hex(24)}"


ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]

# --- input items -------------------------------------------------------------------------------


class InputText(msgspec.Struct, tag="input_text", tag_field="type", kw_only=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class Refusal(msgspec.Struct, tag="refusal", tag_field="type", kw_only=True):
    refusal: str


class InputImage(msgspec.Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None


class InputFile(msgspec.Struct, tag="input_file", tag_field="type", kw_only=True):
    file_id: str | None = None


ContentPart = InputText | OutputText | Refusal | InputImage | InputFile


class MessageItem(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    """A message: the user's, instructions (``system``, ``developer``), or the assistant's."""

    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if isinstance(part, InputImage | InputFile):
                raise ValueError("this model reads text only")
            parts.append(part.refusal if isinstance(part, Refusal) else part.text)
        return "".join(parts)


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    """A call the model made (given back in a later request's input)."""

    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    name: FunctionName
    arguments: str
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET


class FunctionCallOutputItem(
    msgspec.Struct, tag="function_call_output", tag_field="type", kw_only=True
):
    """The result of a call."""

    call_id: Annotated[str, Meta(min_length=1, max_length=256)]
    output: str | list[ContentPart]
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(p.text for p in self.output if isinstance(p, InputText | OutputText))


class ReasoningItem(msgspec.Struct, tag="reasoning", tag_field="type", kw_only=True):
    """Reasoning a client sends back (this model has none; it is skipped)."""

    id: str | UnsetType = UNSET


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


def input_items(value: str | list[dict[str, Any]]) -> list[InputItem]:
    """The request's ``input`` as items; a 400 naming the first bad one."""
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    items: list[InputItem] = []
    for index, raw in enumerate(value):
        if "type" not in raw and "role" in raw:
            raw = {**raw, "type": "message"}
        try:
            items.append(msgspec.convert(raw, InputItem))
        except msgspec.ValidationError as exc:
            raise InvalidRequest(
                f"Invalid input item: {describe(exc)}", param=f"input[{index}]"
            ) from None
    return items


# --- the request -------------------------------------------------------------------------------


class FunctionToolSpec(msgspec.Struct, kw_only=True):
    """``tools[]``: a function (the only tool this service runs)."""

    type: str
    name: FunctionName | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(msgspec.Struct, kw_only=True):
    """``tool_choice: {"type": "function", "name": ...}``."""

    type: Literal["function"]
    name: str


class TextFormatText(msgspec.Struct, tag="text", tag_field="type"):
    """Free text."""


class TextFormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type"):
    """Any JSON object."""


class TextFormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type", kw_only=True):
    """JSON of ``schema``."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = None
    verbosity: str | None = None


class ResponseRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/responses``."""

    model: Annotated[str, Meta(description="The id of a model from /v1/models.")]
    input: Annotated[
        str | Annotated[list[dict[str, Any]], Meta(max_length=MAX_MESSAGES)],
        Meta(
            description="A user message, or a list of items: messages (`input_text` parts), "
            "`function_call` and `function_call_output`."
        ),
    ]
    instructions: str | None = None
    previous_response_id: Annotated[
        str | None,
        Meta(description="Continue from a stored response of yours (its input and output)."),
    ] = None
    tools: Annotated[list[FunctionToolSpec], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None = None
    store: Annotated[
        bool, Meta(description="Keep the response (default true), for GET and chaining.")
    ] = True
    stream: bool | None = None
    background: Annotated[
        bool, Meta(description="Answer at once; poll GET /v1/responses/{id} for the result.")
    ] = False
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    conversation: Any = None
    prompt: Any = None


# --- the response ------------------------------------------------------------------------------


class OutputMessage(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(),
            total_tokens=input_tokens + output_tokens,
        )


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ResponseObject(msgspec.Struct, kw_only=True):
    """A response, as created, streamed, stored and retrieved."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    """``GET /v1/responses/{id}/input_items``."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
