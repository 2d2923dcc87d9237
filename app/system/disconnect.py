"""Stops the work of a request whose client has gone before its answer began.

uvicorn does not cancel a request's handler when the client disconnects; a non-streamed chat
completion would go on generating (holding its slot) or tokenizing for nobody. This ASGI layer
watches the connection once the request's body has been read, and cancels the handler if the
client leaves before the response has started. Streamed responses, once started, are Litestar's
to stop (it listens for the disconnect itself); the layer then only hands it the message.
"""

from __future__ import annotations

import asyncio
import contextlib

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from app.system.access import note_error


class CancelOnDisconnect:
    """ASGI middleware: the handler is cancelled when its client leaves before the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        handler = asyncio.current_task()
        assert handler is not None
        body_read = asyncio.Event()
        disconnect: asyncio.Future[ReceiveMessage] = loop.create_future()
        started = False

        async def app_receive() -> ReceiveMessage:
            if body_read.is_set():  # the watcher reads the connection from here on
                return await asyncio.shield(disconnect)
            message = await receive()
            if message["type"] == "http.disconnect":
                if not disconnect.done():
                    disconnect.set_result(message)
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def watch() -> None:
            await body_read.wait()
            while (message := await receive())["type"] != "http.disconnect":
                pass
            if not disconnect.done():
                disconnect.set_result(message)
            if not started:
                handler.cancel()

        watcher = asyncio.create_task(watch(), name="watch-disconnect")
        try:
            await self._app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            if not disconnect.done() or started:
                raise  # cancelled for another reason (shutdown): pass it on
            note_error("client_closed")
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
