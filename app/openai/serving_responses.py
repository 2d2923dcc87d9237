"""``/v1/responses``: OpenAI's Responses API on the chat machinery, with a durable store.

A request becomes the chat request that asks the same (instructions, the stored conversation of
``previous_response_id``, the input items, tools, ``text.format``) and runs as one. A stored
response keeps, besides the object itself and its input items, the conversation it ends (its
turns as chat messages, its output included), so a follow-up renders the same text the engine
has just computed: the slot's cached prefix covers it and only the new input is prefilled.

``background: true`` answers at once and generates in a task of this process; cancelling it stops
the generation and frees its slot as a client that leaves does. Other replicas see it through
its lease in the database (``responses_leases``): they report it failed if this process stops
without finishing it, and can have it cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from app.accounts.limits import Caller
from app.errors import InvalidRequest, NotFound, ServiceError
from app.openai.protocol_chat import (
    ChatCompletionRequest,
    Message,
)
from app.openai.protocol_responses import (
    Deleted,
    IncompleteDetails,
    InputItem,
    InputItemList,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
    input_items,
    item_id,
)
from app.openai.response_store import ResponseStore, StoredResponse
from app.openai.responses_input import chat_messages_of, chat_request, with_ids
from app.openai.responses_leases import Leases, cancel_once, running
from app.openai.responses_output import EventWriter, Output, OutputBuilder, reply_output
from app.openai.serving_base import Closing
from app.openai.serving_chat import ChatServing
from app.openai.turn import Turn
from app.system.access import note_error

logger = logging.getLogger(__name__)

_conversation = msgspec.json.Decoder(list[Message])


class ResponsesServing:
    """Creates, stores, continues and cancels responses."""

    def __init__(self, chat: ChatServing, store: ResponseStore) -> None:
        self._chat = chat
        self._store = store
        self._leases = Leases(store)
        self._background: dict[str, asyncio.Task[None]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: background responses still running at shutdown are cancelled
        (and stored as such), and responses held in memory are written if they can be."""
        try:
            yield
        finally:
            tasks = list(self._background.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not await self._store.flush():
                logger.error(
                    "%d stored responses could not be written before shutdown", self._store.held
                )

    # --- create --------------------------------------------------------------------------------

    async def create(
        self, request: ResponseRequest, caller: Caller
    ) -> tuple[ResponseObject, dict[str, str]]:
        """The whole response, or (``background``) the response just begun; and the headers
        that say what was dropped of the conversation to fit the context."""
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
            return answer, pending.dropped
        turn = await self._chat.turn(pending.chat, caller)
        await self._finish(pending, await reply_output(turn), turn, caller)
        return pending.body, pending.dropped

    async def stream(
        self, request: ResponseRequest, caller: Caller
    ) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """The response as OpenAI streams it: typed events, each with a ``sequence_number``;
        and the headers that say what was dropped of the conversation to fit the context."""
        pending = await self._pending(request, caller)
        turn = await self._chat.turn(pending.chat, caller)
        return Closing(self._events(pending, turn, caller), turn.close), pending.dropped

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
            stored = await self._find(request.previous_response_id, caller)
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
        items = with_ids(input_items(request.input))
        conversation = [*earlier, *chat_messages_of(items)]
        system = [Message(role="system", content=request.instructions)]
        chat = chat_request(
            request, [*system, *conversation] if request.instructions else conversation
        )
        # What is generated from may lose its oldest turns; what is stored keeps them.
        chat, dropped = await self._chat.fit(chat, caller)
        body = ResponseObject(
            id=item_id("resp"),
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
        return _Pending(body, chat, items, conversation, dropped)

    # --- finishing -----------------------------------------------------------------------------

    async def _finish(self, pending: _Pending, reply: Output, turn: Turn, caller: Caller) -> None:
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
        if not pending.body.store or pending.deleted:
            return
        stored = StoredResponse(
            id=pending.body.id,
            body=msgspec.json.encode(pending.body),
            input_items=msgspec.json.encode(pending.items),
            conversation=msgspec.json.encode(pending.conversation),
            leased=running(pending.body),
            # A background one's later saves are written only while its row is leased to it.
            write="leased" if pending.body.background and pending.written else "any",
        )
        pending.written = True
        # Shielded: a client that leaves does not lose a write the response depends on.
        await asyncio.shield(
            self._store.save(caller.user.id, stored, created_at=pending.body.created_at)
        )

    async def _run_in_background(
        self, pending: _Pending, turn: Turn, caller: Caller, saved: asyncio.Future[None]
    ) -> None:
        renewing: asyncio.Task[None] | None = None
        try:
            try:
                await self._save(pending, caller)
            except BaseException as exc:
                saved.set_exception(exc)
                raise
            saved.set_result(None)
            task = asyncio.current_task()
            assert task is not None
            renewing = asyncio.create_task(
                self._leases.keep(caller.user.id, pending.body.id, task, pending.forget)
            )
            pending.body.status = "in_progress"
            await self._save(pending, caller)
            reply = await reply_output(turn)
            await _stopped(renewing)  # no renewal after the last save
            await self._finish(pending, reply, turn, caller)
        except asyncio.CancelledError:
            if pending.body.status not in ("completed", "incomplete"):  # else it is stored
                pending.body.status = "cancelled"  # unless it was deleted (``forget``)
                await asyncio.shield(self._wind_up(pending, turn, renewing, caller))
            raise
        except ServiceError as exc:
            pending.body.status = "failed"
            pending.body.error = ResponseError(code=exc.code or exc.error_type, message=exc.message)
            await asyncio.shield(self._wind_up(pending, turn, renewing, caller))
        except Exception:
            logger.exception("a background response failed")
            pending.body.status = "failed"
            pending.body.error = ResponseError(
                code="server_error", message="The server had an error while generating."
            )
            await asyncio.shield(self._wind_up(pending, turn, renewing, caller))
        finally:
            if renewing is not None:
                renewing.cancel()
            await turn.close()

    async def _wind_up(
        self, pending: _Pending, turn: Turn, renewing: asyncio.Task[None] | None, caller: Caller
    ) -> None:
        """A background response that ends early: its renewals stop and its slot is freed,
        then it is stored as it ends (shielded by the caller: a second cancel while this runs
        does not lose the save)."""
        if renewing is not None:
            await _stopped(renewing)
        await turn.close()
        await self._save(pending, caller)

    async def _events(self, pending: _Pending, turn: Turn, caller: Caller) -> AsyncGenerator[bytes]:
        events = EventWriter()
        body = pending.body
        yield events("response.created", response=body)
        yield events("response.in_progress", response=body)
        output = OutputBuilder()
        parts = turn.parts()
        try:
            async for part in parts:
                for name, fields in output.feed(part):
                    yield events(name, **fields)
            for name, fields in output.finish():
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
        stored = await self._stored(response_id, caller)  # the caller's, or a 404
        task = self._background.get(response_id)
        if task is not None:  # stopped first: it would store itself again as cancelled
            cancel_once(task)
            await asyncio.wait({task})
        elif stored.lease_until is not None:  # the same, on the replica generating it
            await self._leases.cancel_elsewhere(caller.user.id, stored)
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
        stored = await self._stored(response_id, caller)
        body = _body(stored)
        if not body.background:
            raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
        task = self._background.get(response_id)
        if task is not None:
            cancel_once(task)
            await asyncio.wait({task})
            return await self.retrieve(response_id, caller)
        if stored.lease_until is None:
            return body  # finished already
        cancelled = await self._leases.cancel_elsewhere(caller.user.id, stored)
        if cancelled is None:
            raise _not_found(response_id)  # deleted meanwhile
        return _body(cancelled)

    async def _stored(self, response_id: str, caller: Caller) -> StoredResponse:
        """The caller's stored response, or a 404."""
        stored = await self._find(response_id, caller)
        if stored is None:
            raise _not_found(response_id)
        return stored

    async def _find(self, response_id: str, caller: Caller) -> StoredResponse | None:
        """The caller's stored response, if there is one; a background response whose replica
        stopped before finishing it, failed."""
        stored = await self._store.get(caller.user.id, response_id)
        if stored is None or response_id in self._background:  # generated here: leased
            return stored
        return await self._leases.settled(caller.user.id, stored)


async def _stopped(task: asyncio.Task[None]) -> None:
    """Cancels ``task`` and waits for it to end (a cancellation of the caller still raises)."""
    task.cancel()
    await asyncio.wait({task})


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
        dropped: dict[str, str],
    ) -> None:
        self.body = body
        self.chat = chat
        self.items = items
        self.conversation = conversation
        self.dropped = dropped  # the headers that say what ``chat`` lost to fit the context
        self.written = False  # saved once already
        self.deleted = False  # deleted while it was generated: nothing more of it is saved

    def forget(self) -> None:
        self.deleted = True
