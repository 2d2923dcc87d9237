"""The outermost layer of every HTTP request: its id, its access line, its HTTP metrics.

It wraps Litestar's own ASGI handler (as Litestar's OpenTelemetry plugin does), outside routing and
exception handling, so unknown paths, errors and streamed responses all pass through it, and the
access line is written when the last byte of a stream has gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.system.logs import begin_request, end_request
from app.system.metrics import Metrics

logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED = 499
"""The status the access line and metrics give a request its client left before the answer
(nginx's convention)."""


class RequestContext:
    """ASGI middleware: ``X-Request-ID`` in (or made) and out, then one access line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        method, path = scope["method"], scope["path"]
        log, token = begin_request(given, method, path)
        status = 500
        header = (REQUEST_ID_HEADER.encode(), log.id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(k.encode(), v.encode()) for k, v in log.rate_headers]
                headers = [*message.get("headers", ()), header, *extra]
                if method == "OPTIONS" and status == 204:
                    headers = _with_all_methods(scope, headers)
                message["headers"] = headers
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            if log.error_code == "client_closed":
                status = CLIENT_CLOSED
            seconds = time.perf_counter() - log.started
            user = getattr(scope.get("user"), "username", None)
            ttft = log.ttft
            logger.info(
                "request",
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "status": status,
                        "user": user,
                        "model": log.model,
                        "prompt_tokens": log.prompt_tokens,
                        "completion_tokens": log.completion_tokens,
                        "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
                        "duration_ms": round(seconds * 1000, 1),
                        "error": log.error_code,
                    }
                },
            )
            route = scope.get("path_template") or "unmatched"
            self._metrics.http(route, method, status, seconds)
            if log.error_code == "queue_full":
                self._metrics.queue_rejections.inc()
            for callback in log.on_end:
                callback()
            end_request(token)


def _with_all_methods(scope: Scope, headers: list[Any]) -> list[Any]:
    """Litestar 2 answers OPTIONS with the methods of only one of the handlers that share a path
    (litestar-org/litestar#4169, fixed in v3); list them all, as the OpenAPI document does."""
    template = scope.get("path_template")
    methods = next(
        (route.methods for route in scope["app"].routes if route.path_format == template), None
    )
    if not methods:
        return headers
    allow = ", ".join(sorted(methods)).encode()
    return [(k, allow if k.lower() == b"allow" else v) for k, v in headers]
