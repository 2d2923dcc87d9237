"""``/v1/responses``: OpenAI's Responses API on the chat machinery, with a durable store.

A request becomes the chat request that asks the same (instructions, the stored conversation of
``previous_response_id``, the input items, tools, ``text.format``) and runs as one. A stored
response keeps, besides the object itself and its input items, the conversation it ends (its
turns as chat messages, its output included), so a follow-up renders the same text the engine
has just computed: the slot's cached prefix covers it and only the new input is prefilled.

``background: true`` answers at once and generates in a task of this process; cancelling it stops
the generation and frees its slot as a client that leaves does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from app.accounts.limits import Caller
from app.errors import InvalidRequest, NotFound, ServiceError
from app.inference.engine import Finished
from app.openai.protocol_chat import (
    ChatCompletionRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    Message,
    ResponseFormat,
)
from app.openai.protocol_responses import (
    Deleted,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    IncompleteDetails,
    InputItem,
    InputItemList,
    InputText,
    MessageItem,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningItem,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    input_items,
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
from app.openai.response_store import ResponseStore, StoredResponse
from app.openai.serving_base import Closing
from app.openai.serving_chat import (
    ChatServing,
    ReplyArguments,
    ReplyCall,
    ReplyEnd,
    ReplyText,
    Turn,
    whole_arguments,
)
from app.system.access import note_error

logger = logging.getLogger(__name__)

_conversation = msgspec.json.Decoder(list[Message])


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponsesServing:
    """Creates, stores, continues and cancels responses."""

    def __init__(self, chat: ChatServing, store: ResponseStore) -> None:
        self._chat = chat
        self._store = store
        self._background: dict[str, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: background responses still running at shutdown are cancelled
        (and stored as such)."""
        try:
            yield
        finally:
            tasks = list(self._background.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- create --------------------------------------------------------------------------------

    async def create(self, request: ResponseRequest, caller: Caller) -> ResponseObject:
        """The whole response, or (``background``) the response just begun."""
        pending = await self._pending(request, caller)
        if request.background:
            turn = await self._chat.turn(pending.chat, caller, wait=False)
            pending.body.status = "queued"
            answer = msgspec.structs.replace(pending.body)  # as it is now
            saved: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._run_in_background(pending, turn, caller, saved))
            self._background[pending.body.id] = task
            task.add_done_callback(lambda _: self._background.pop(pending.body.id, None))
            await asyncio.shield(saved)  # stored before it is answered: a GET finds it
            return answer
        turn = await self._chat.turn(pending.chat, caller)
        await self._finish(pending, await _reply(turn), turn, caller)
        return pending.body

    async def stream(self, request: ResponseRequest, caller: Caller) -> AsyncIterator[bytes]:
        """The response as OpenAI streams it: typed events, each with a ``sequence_number``."""
        pending = await self._pending(request, caller)
        turn = await self._chat.turn(pending.chat, caller)
        return Closing(self._events(pending, turn, caller), turn.close)

    async def _pending(self, request: ResponseRequest, caller: Caller) -> _Pending:
        if request.background and not request.store:
            raise InvalidRequest("background needs store: true.", param="background")
        if request.background and request.stream:
            raise InvalidRequest(
                "background with stream is not supported: poll GET /v1/responses/{id}.",
                param="stream",
            )
        if request.conversation is not None or request.prompt is not None:
            field = "conversation" if request.conversation is not None else "prompt"
            raise InvalidRequest(f"{field} is not supported.", param=field)
        earlier: list[Message] = []
        if request.previous_response_id is not None:
            stored = await self._store.get(caller.user.id, request.previous_response_id)
            if stored is None:
                raise InvalidRequest(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            status = _body(stored).status
            if status not in ("completed", "incomplete"):
                raise InvalidRequest(
                    f"Previous response '{request.previous_response_id}' is {status}: only a "
                    "finished response can be continued.",
                    param="previous_response_id",
                )
            earlier = _conversation.decode(stored.conversation)
        items = _with_ids(input_items(request.input))
        conversation = [*earlier, *_messages(items)]
        system = [Message(role="system", content=request.instructions)]
        chat = _chat_request(
            request, [*system, *conversation] if request.instructions else conversation
        )
        body = ResponseObject(
            id=_id("resp"),
            created_at=int(time.time()),
            status="in_progress",
            background=request.background,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=request.model,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            store=request.store,
            temperature=request.temperature,
            text=msgspec.to_builtins(request.text)
            if request.text
            else {"format": {"type": "text"}},
            tool_choice=msgspec.to_builtins(request.tool_choice) if request.tool_choice else "auto",
            tools=[msgspec.to_builtins(t) for t in request.tools or ()],
            top_p=request.top_p,
            user=request.user,
            metadata=request.metadata or {},
        )
        return _Pending(body, chat, items, conversation)

    # --- finishing -----------------------------------------------------------------------------

    async def _finish(self, pending: _Pending, reply: _Output, turn: Turn, caller: Caller) -> None:
        body = pending.body
        body.model = turn.job.model
        body.output = reply.items
        finished = reply.finished
        body.usage = ResponseUsage.of(
            turn.prompt_tokens, finished.completion_tokens, finished.cached_tokens
        )
        if reply.cut:
            body.status = "incomplete"
            body.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        else:
            body.status = "completed"
        pending.conversation.append(reply.message)
        await self._save(pending, caller)

    async def _save(self, pending: _Pending, caller: Caller) -> None:
        if not pending.body.store:
            return
        stored = StoredResponse(
            id=pending.body.id,
            body=msgspec.json.encode(pending.body),
            input_items=msgspec.json.encode(pending.items),
            conversation=msgspec.json.encode(pending.conversation),
        )
        # Shielded: a client that leaves does not lose a write the response depends on.
        await asyncio.shield(
            self._store.save(caller.user.id, stored, created_at=pending.body.created_at)
        )

    async def _run_in_background(
        self, pending: _Pending, turn: Turn, caller: Caller, saved: asyncio.Future[None]
    ) -> None:
        try:
            try:
                await self._save(pending, caller)
            except BaseException as exc:
                saved.set_exception(exc)
                raise
            saved.set_result(None)
            pending.body.status = "in_progress"
            await self._save(pending, caller)
            await self._finish(pending, await _reply(turn), turn, caller)
        except asyncio.CancelledError:
            if pending.body.status not in ("completed", "incomplete"):  # else it is stored
                pending.body.status = "cancelled"
                await self._save(pending, caller)
            raise
        except ServiceError as exc:
            pending.body.status = "failed"
            pending.body.error = ResponseError(code=exc.code or exc.error_type, message=exc.message)
            await self._save(pending, caller)
        except Exception:
            logger.exception("a background response failed")
            pending.body.status = "failed"
            pending.body.error = ResponseError(
                code="server_error", message="The server had an error while generating."
            )
            await self._save(pending, caller)
        finally:
            await turn.close()

    async def _events(self, pending: _Pending, turn: Turn, caller: Caller) -> AsyncGenerator[bytes]:
        events = _EventWriter()
        body = pending.body
        yield events("response.created", response=body)
        yield events("response.in_progress", response=body)
        output = _OutputBuilder()
        parts = turn.parts()
        try:
            async for part in parts:
                for name, fields in output.feed(part):
                    yield events(name, **fields)
            for name, fields in output.close():
                yield events(name, **fields)
            await self._finish(pending, output.result(), turn, caller)
            yield events(
                "response.completed" if body.status == "completed" else "response.incomplete",
                response=body,
            )
        except ServiceError as exc:
            note_error(exc.code or exc.error_type)
            body.status = "failed"
            body.error = ResponseError(code=exc.code or exc.error_type, message=exc.message)
            await self._save(pending, caller)
            yield events("response.failed", response=body)
        except Exception:
            logger.exception("a stream failed after it began")
            note_error("server_error")
            body.status = "failed"
            body.error = ResponseError(
                code="server_error", message="The server had an error while generating."
            )
            await self._save(pending, caller)
            yield events("response.failed", response=body)
        finally:
            await parts.aclose()  # a client that left stops the generation now

    # --- the store -----------------------------------------------------------------------------

    async def retrieve(self, response_id: str, caller: Caller) -> ResponseObject:
        """The stored response."""
        return _body(await self._stored(response_id, caller))

    async def delete(self, response_id: str, caller: Caller) -> Deleted:
        await self._stored(response_id, caller)  # the caller's, or a 404
        task = self._background.get(response_id)
        if task is not None:  # stopped first: it would store itself again as cancelled
            task.cancel()
            await asyncio.wait({task})
        if not await self._store.delete(caller.user.id, response_id):
            raise _not_found(response_id)
        return Deleted(id=response_id)

    async def input_items(
        self, response_id: str, caller: Caller, *, order: str, limit: int, after: str | None
    ) -> InputItemList:
        stored = await self._stored(response_id, caller)
        items: list[dict[str, Any]] = msgspec.json.decode(stored.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequest(f"No input item has the id {after!r}.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0].get("id") if page else None,
            last_id=page[-1].get("id") if page else None,
            has_more=len(items) > limit,
        )

    async def cancel(self, response_id: str, caller: Caller) -> ResponseObject:
        """Stops a background response; the response as it then is."""
        body = _body(await self._stored(response_id, caller))
        if not body.background:
            raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
        task = self._background.get(response_id)
        if task is None:
            return body  # finished already (or on another replica)
        task.cancel()
        await asyncio.wait({task})
        return await self.retrieve(response_id, caller)

    async def _stored(self, response_id: str, caller: Caller) -> StoredResponse:
        stored = await self._store.get(caller.user.id, response_id)
        if stored is None:
            raise _not_found(response_id)
        return stored


def _body(stored: StoredResponse) -> ResponseObject:
    return msgspec.json.decode(stored.body, type=ResponseObject)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No response with the id '{response_id}'.", param="response_id")


class _Pending:
    """A response being made: its object, the chat request that makes it, its input items and
    the conversation it continues (its output is appended when it is done)."""

    def __init__(
        self,
        body: ResponseObject,
        chat: ChatCompletionRequest,
        items: list[InputItem],
        conversation: list[Message],
    ) -> None:
        self.body = body
        self.chat = chat
        self.items = items
        self.conversation = conversation


# --- requests ----------------------------------------------------------------------------------


def _with_ids(items: list[InputItem]) -> list[InputItem]:
    """The items, each with an id (as OpenAI lists them)."""
    prefixes = {MessageItem: "msg", FunctionCallItem: "fc", FunctionCallOutputItem: "fco"}
    result: list[InputItem] = []
    for item in items:
        if isinstance(item, ReasoningItem):
            continue
        if not isinstance(item.id, str):
            item = msgspec.structs.replace(item, id=_id(prefixes[type(item)]))
        if isinstance(item, MessageItem) and isinstance(item.content, str):
            part = (
                OutputText(text=item.content)
                if item.role == "assistant"
                else InputText(text=item.content)
            )
            item = msgspec.structs.replace(item, content=[part])
        result.append(item)
    return result


def _messages(items: list[InputItem]) -> list[Message]:
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


def _chat_request(request: ResponseRequest, messages: list[Message]) -> ChatCompletionRequest:
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


# --- output ------------------------------------------------------------------------------------


class _Output:
    """A finished reply as output items, and as the assistant turn a follow-up continues."""

    def __init__(
        self, items: list[OutputItem], message: Message, finished: Finished, cut: bool
    ) -> None:
        self.items = items
        self.message = message
        self.finished = finished
        self.cut = cut


async def _reply(turn: Turn) -> _Output:
    reply = await turn.reply()
    assert reply.end is not None
    items: list[OutputItem] = []
    if reply.text:
        items.append(
            OutputMessage(id=_id("msg"), status="completed", content=[OutputText(text=reply.text)])
        )
    calls = []
    for call_id, name, arguments in reply.calls:
        items.append(
            OutputFunctionCall(
                id=_id("fc"), call_id=call_id, name=name, arguments=arguments, status="completed"
            )
        )
        calls.append(
            ToolCallView(id=call_id, function=FunctionCall(name=name, arguments=arguments))
        )
    message = Message(role="assistant", content=reply.text or None, tool_calls=calls or None)
    cut = reply.end.reason == "length"
    return _Output(items, message, reply.end.finished, cut)


class _OutputBuilder:
    """Output items built from a reply's parts as they come, with the events that say so."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._open: OutputMessage | OutputFunctionCall | None = None
        self._text: list[str] = []  # every text of the reply
        self._pieces: list[str] = []  # the open item's text or arguments, joined when it closes
        self._calls: list[ToolCallView] = []
        self._end: ReplyEnd | None = None

    def feed(self, part: object) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        index = len(self.items) - 1
        if isinstance(part, ReplyText):
            if not isinstance(self._open, OutputMessage):
                events += self.close()
                item = OutputMessage(id=_id("msg"), status="in_progress", content=[])
                self._open = item
                self.items.append(item)
                index = len(self.items) - 1
                events.append(
                    ("response.output_item.added", {"output_index": index, "item": _now(item)})
                )
                events.append(
                    (
                        "response.content_part.added",
                        {
                            "item_id": item.id,
                            "output_index": index,
                            "content_index": 0,
                            "part": OutputText(text=""),
                        },
                    )
                )
                item.content.append(OutputText(text=""))
            self._pieces.append(part.text)
            self._text.append(part.text)
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "item_id": self._open.id,
                        "output_index": index,
                        "content_index": 0,
                        "delta": part.text,
                        "logprobs": [],
                    },
                )
            )
        elif isinstance(part, ReplyCall):
            events += self.close()
            call = OutputFunctionCall(
                id=_id("fc"), call_id=part.id, name=part.name, arguments="", status="in_progress"
            )
            self._open = call
            self.items.append(call)
            events.append(
                (
                    "response.output_item.added",
                    {"output_index": len(self.items) - 1, "item": _now(call)},
                )
            )
        elif isinstance(part, ReplyArguments) and isinstance(self._open, OutputFunctionCall):
            self._pieces.append(part.arguments)
            events.append(
                (
                    "response.function_call_arguments.delta",
                    {"item_id": self._open.id, "output_index": index, "delta": part.arguments},
                )
            )
        elif isinstance(part, ReplyEnd):
            self._end = part
        return events

    def close(self) -> list[tuple[str, dict[str, Any]]]:
        """The events that finish the open item."""
        item, self._open = self._open, None
        if item is None:
            return []
        joined, self._pieces = "".join(self._pieces), []
        index = len(self.items) - 1
        cut = self._end is not None and self._end.reason == "length"
        item.status = "incomplete" if cut else "completed"
        if isinstance(item, OutputMessage):
            part = item.content[0]
            part.text = joined
            return [
                (
                    "response.output_text.done",
                    {
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "text": part.text,
                        "logprobs": [],
                    },
                ),
                (
                    "response.content_part.done",
                    {
                        "item_id": item.id,
                        "output_index": index,
                        "content_index": 0,
                        "part": _now(part),
                    },
                ),
                ("response.output_item.done", {"output_index": index, "item": _now(item)}),
            ]
        item.arguments = joined
        if not cut and whole_arguments(joined):  # a call cut short is not part of the conversation
            self._calls.append(
                ToolCallView(
                    id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
                )
            )
        return [
            (
                "response.function_call_arguments.done",
                {
                    "item_id": item.id,
                    "output_index": index,
                    "name": item.name,
                    "arguments": item.arguments,
                },
            ),
            ("response.output_item.done", {"output_index": index, "item": _now(item)}),
        ]

    def result(self) -> _Output:
        assert self._end is not None
        text = "".join(self._text)
        text = text.strip() if self._calls else text
        message = Message(role="assistant", content=text or None, tool_calls=self._calls or None)
        cut = self._end.reason == "length"
        return _Output(self.items, message, self._end.finished, cut)


def _now(item: msgspec.Struct) -> Any:
    """The item as it is now (events are written after the item has changed further)."""
    return msgspec.to_builtins(item)


class _EventWriter:
    """Server-sent events named by their type, numbered in order."""

    def __init__(self) -> None:
        self._sequence = 0

    def __call__(self, kind: str, /, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(payload) + b"\n\n"
