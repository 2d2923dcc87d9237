"""``/v1/messages``: Anthropic's Messages API on the chat machinery.

A request becomes a chat request (system, turns with their tool uses and results, tools and
``tool_choice``) and runs as one: the model's template, sampling, grammars and tool calling, the
caller's slot, limits and usage are the chat completions' own. What comes back is shaped as
Anthropic shapes it: content blocks, ``stop_reason``, and its stream of events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import string
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from app.accounts.limits import Caller
from app.anthropic.protocol import (
    AnthropicError,
    AnthropicErrorBody,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    CountTokensRequest,
    CountTokensResponse,
    DocumentBlock,
    ImageBlock,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageParam,
    MessagesRequest,
    MessageStart,
    MessageStop,
    MessageUsage,
    OutputUsage,
    Ping,
    RedactedThinkingBlock,
    StopDelta,
    StopReason,
    TextBlock,
    TextDelta,
    TextOut,
    ThinkingBlock,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    event,
)
from app.error_responses import anthropic_error_type
from app.errors import InvalidRequest, ServiceError
from app.openai.protocol_chat import ChatCompletionRequest, JsonSchemaFormat, JsonSchemaSpec
from app.openai.protocol_chat import Message as ChatMessage
from app.openai.protocol_tools import (
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    NamedFunction,
    NamedToolChoice,
    ToolCallView,
    ToolChoice,
)
from app.openai.serving_base import Closing
from app.openai.serving_chat import ChatServing
from app.openai.turn import ReplyArguments, ReplyCall, ReplyEnd, ReplyPart, ReplyText
from app.system.access import note_error

logger = logging.getLogger(__name__)

PING_EVERY = 10.0
"""Seconds without an event after which a stream sends a ``ping``."""

_ALPHANUMERIC = string.ascii_letters + string.digits
_Part = TypeVar("_Part")


class MessagesServing:
    """Anthropic's Messages API, answered by the chat service."""

    def __init__(self, chat: ChatServing) -> None:
        self._chat = chat

    async def create(
        self, request: MessagesRequest, caller: Caller
    ) -> tuple[Message, dict[str, str]]:
        """The whole message, and the headers that say what was dropped to fit the context."""
        chat, dropped = await self._fit(request, caller)
        turn = await self._chat.turn(chat, caller, prefill=prefill_of(request))
        reply = await turn.reply()
        assert reply.end is not None
        content: list[TextOut | ToolUseOut] = []
        if reply.text:
            content.append(TextOut(text=reply.text))
        for call_id, name, arguments in reply.calls:
            content.append(ToolUseOut(id=call_id, name=name, input=json.loads(arguments)))
        reason, sequence = _stop_reason(reply.end)
        if reason == "tool_use" and not reply.calls:
            reason = "max_tokens"
        message = Message(
            id=message_id(),
            model=turn.job.model,
            content=content,
            stop_reason=reason,
            stop_sequence=sequence,
            usage=MessageUsage(
                input_tokens=turn.prompt_tokens,
                output_tokens=reply.end.finished.completion_tokens,
                cache_read_input_tokens=reply.end.finished.cached_tokens,
            ),
        )
        return message, dropped

    async def stream(
        self, request: MessagesRequest, caller: Caller
    ) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """The message as Anthropic streams it, an ``error`` event if it fails after it began;
        and the headers that say what was dropped to fit the context."""
        chat, dropped = await self._fit(request, caller)
        turn = await self._chat.turn(chat, caller, prefill=prefill_of(request))
        start = Message(
            id=message_id(),
            model=turn.job.model,
            content=[],
            stop_reason=None,
            usage=MessageUsage(input_tokens=turn.prompt_tokens, output_tokens=0),
        )
        events = Closing(_events(start, _with_pings(turn.parts(), PING_EVERY)), turn.close)
        return events, dropped

    async def _fit(
        self, request: MessagesRequest, caller: Caller
    ) -> tuple[ChatCompletionRequest, dict[str, str]]:
        """The chat request, its oldest turns dropped to fit where the service does that."""
        return await self._chat.fit(chat_request(request), caller, prefill=prefill_of(request))

    async def count_tokens(
        self, request: CountTokensRequest, caller: Caller
    ) -> CountTokensResponse:
        """The prompt's tokens, as ``create`` would count them."""
        tokens = await self._chat.count_prompt(
            chat_request(request), caller, prefill=prefill_of(request)
        )
        return CountTokensResponse(input_tokens=tokens)


async def _events(start: Message, parts: AsyncGenerator[ReplyPart | None]) -> AsyncGenerator[bytes]:
    yield event(MessageStart(message=start))
    yield event(Ping())
    block = -1  # the index of the open content block
    kind = ""  # its kind: "text" or "tool_use"
    try:
        async for part in parts:
            if part is None:
                yield event(Ping())
            elif isinstance(part, ReplyText):
                if kind != "text":
                    if kind:
                        yield event(ContentBlockStop(index=block))
                    block, kind = block + 1, "text"
                    yield event(ContentBlockStart(index=block, content_block=TextOut(text="")))
                yield event(ContentBlockDelta(index=block, delta=TextDelta(text=part.text)))
            elif isinstance(part, ReplyCall):
                if kind:
                    yield event(ContentBlockStop(index=block))
                block, kind = block + 1, "tool_use"
                started = ToolUseOut(id=part.id, name=part.name, input={})
                yield event(ContentBlockStart(index=block, content_block=started))
            elif isinstance(part, ReplyArguments):
                delta = InputJsonDelta(partial_json=part.arguments)
                yield event(ContentBlockDelta(index=block, delta=delta))
            elif isinstance(part, ReplyEnd):
                if kind:
                    yield event(ContentBlockStop(index=block))
                reason, sequence = _stop_reason(part)
                yield event(
                    MessageDelta(
                        delta=StopDelta(stop_reason=reason, stop_sequence=sequence),
                        usage=OutputUsage(output_tokens=part.finished.completion_tokens),
                    )
                )
                yield event(MessageStop())
    except ServiceError as exc:
        note_error(exc.code or exc.error_type)
        body = AnthropicErrorBody(type=anthropic_error_type(exc.status_code), message=exc.message)
        yield event(AnthropicError(body))
    except Exception:
        logger.exception("a stream failed after it began")
        note_error("server_error")
        body = AnthropicErrorBody(
            type="api_error", message="The server had an error while generating."
        )
        yield event(AnthropicError(body))
    finally:
        await parts.aclose()


async def _with_pings(parts: AsyncGenerator[_Part], every: float) -> AsyncGenerator[_Part | None]:
    """``parts``, with a None wherever ``every`` seconds pass without one. One task reads the
    parts (and alone closes them); this waits on what it passes over."""
    queue: asyncio.Queue[tuple[bool, object]] = asyncio.Queue(maxsize=1)

    async def read() -> None:
        try:
            async for part in parts:
                await queue.put((False, part))
        except Exception as exc:
            await queue.put((True, exc))
            return
        finally:
            await parts.aclose()
        await queue.put((True, None))

    reader = asyncio.create_task(read())
    try:
        while True:
            try:
                ended, item = await asyncio.wait_for(queue.get(), every)
            except TimeoutError:
                yield None
                continue
            if ended:
                if isinstance(item, Exception):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        reader.cancel()
        await asyncio.wait({reader})


def _stop_reason(end: ReplyEnd) -> tuple[StopReason, str | None]:
    if end.reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if end.reason == "length":
        return "max_tokens", None
    if end.finished.stop_sequence is not None:
        return "stop_sequence", end.finished.stop_sequence
    return "end_turn", None


def message_id() -> str:
    return "msg_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


def prefill_of(request: CountTokensRequest) -> str | None:
    """The text of a final assistant turn, which the reply continues (Anthropic's prefill);
    None when the conversation ends otherwise."""
    last = request.messages[-1]
    if last.role != "assistant":
        return None
    if isinstance(last.content, str):
        text = last.content
    elif all(
        isinstance(b, TextBlock | ThinkingBlock | RedactedThinkingBlock) for b in last.content
    ):
        text = "\n\n".join(b.text for b in last.content if isinstance(b, TextBlock))
    else:
        return None  # a turn of tool uses is rendered as it is
    if text != text.rstrip():
        raise InvalidRequest(
            "The final assistant content cannot end with trailing whitespace.",
            param=f"messages[{len(request.messages) - 1}].content",
        )
    return text or None


def chat_request(request: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request that asks the same; a 400 for what cannot be asked."""
    if request.thinking is not None and request.thinking.get("type") == "enabled":
        raise InvalidRequest("Extended thinking is not supported by this model.", param="thinking")
    messages: list[ChatMessage] = []
    if request.system is not None:
        system = request.system
        text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
        messages.append(ChatMessage(role="system", content=text))
    uses: set[str] = set()
    turns = request.messages[:-1] if prefill_of(request) is not None else request.messages
    for index, turn in enumerate(turns):
        messages += _turn(turn, f"messages[{index}]", uses)
    tools = [
        FunctionTool(
            type="function",
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            ),
        )
        for tool in request.tools or ()
    ]
    choice: ToolChoice | None = None
    parallel = None
    if isinstance(request.tool_choice, ToolChoiceNone):
        choice = "none"
    elif isinstance(request.tool_choice, ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool):
        if request.tool_choice.disable_parallel_tool_use:
            parallel = False
        if isinstance(request.tool_choice, ToolChoiceAny):
            choice = "required"
        elif isinstance(request.tool_choice, ToolChoiceTool):
            choice = NamedToolChoice(
                type="function", function=NamedFunction(name=request.tool_choice.name)
            )
        else:
            choice = "auto"
    chat = ChatCompletionRequest(
        model=request.model,
        messages=messages,
        tools=tools or None,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        max_tokens=1,
    )
    if isinstance(request, MessagesRequest):
        chat.max_tokens = request.max_tokens
        chat.stop = request.stop_sequences
        chat.temperature = request.temperature
        chat.top_p = request.top_p
        chat.top_k = request.top_k
        chat.stream = request.stream
        if request.output_config is not None and request.output_config.format is not None:
            schema = request.output_config.format.schema
            spec = JsonSchemaSpec(name="output", schema=schema, strict=True)
            chat.response_format = JsonSchemaFormat(json_schema=spec)
    return chat


def _turn(turn: MessageParam, where: str, uses: set[str]) -> list[ChatMessage]:
    """One Anthropic turn as chat messages: a user turn's tool results become ``tool``
    messages (before its text), an assistant turn's tool uses its ``tool_calls``."""
    if isinstance(turn.content, str):
        return [ChatMessage(role=turn.role, content=turn.content)]
    texts: list[str] = []
    results: list[ChatMessage] = []
    calls: list[ToolCallView] = []
    for j, block in enumerate(turn.content):
        place = f"{where}.content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            continue
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise InvalidRequest("This model reads text only.", param=place)
        elif isinstance(block, ToolUseBlock):
            if turn.role != "assistant":
                raise InvalidRequest("Only assistant turns may hold tool_use blocks.", param=place)
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                ToolCallView(
                    id=block.id, function=FunctionCall(name=block.name, arguments=arguments)
                )
            )
            uses.add(block.id)
        elif isinstance(block, ToolResultBlock):
            if turn.role != "user":
                raise InvalidRequest("Only user turns may hold tool_result blocks.", param=place)
            if block.tool_use_id not in uses:
                raise InvalidRequest(
                    f"The tool_result's tool_use_id {block.tool_use_id!r} answers no tool_use "
                    "block of an earlier assistant turn.",
                    param=f"{place}.tool_use_id",
                )
            text = block.text()
            results.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=block.tool_use_id,
                    content=f"Error: {text}" if block.is_error else text,
                )
            )
    if turn.role == "assistant":
        return [
            ChatMessage(
                role="assistant", content="\n\n".join(texts) or None, tool_calls=calls or None
            )
        ]
    if texts or not results:
        results.append(ChatMessage(role=turn.role, content="\n\n".join(texts)))
    return results
