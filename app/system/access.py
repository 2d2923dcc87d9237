"""The outermost layer of every HTTP request: its id, its access line, its HTTP metrics.

It wraps Litestar's own ASGI handler (as Litestar's OpenTelemetry plugin does), outside routing and
exception handling, so unknown paths, errors and streamed responses all pass through it, and the
access line is written when the last byte of a stream has gone.

The access line's record lives in a context variable for the length of the request: a logging
filter reads its id, and the generation code notes the model, tokens and time to first token
there. It carries nothing else: who is calling travels as a parameter.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.system.metrics import Metrics

logger = logging.getLogger("app.access")

PROBED = frozenset({"/health"})
"""Paths that health checks poll."""

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED = 499
"""The status the access line and metrics give a request its client left before the answer
(nginx's convention)."""

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}\Z")


@dataclass
class _AccessRecord:
    """What the access line of one request says."""

    id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft: float | None = None
    error_code: str | None = None


_current: ContextVar[_AccessRecord | None] = ContextVar("access_record", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    record = _current.get()
    return None if record is None else record.id


def request_started() -> float:
    """``perf_counter()`` when the request being served arrived (now, outside a request)."""
    record = _current.get()
    return time.perf_counter() if record is None else record.started


def note_error(code: str | None) -> None:
    """Records the error a request is answered with (one found after a stream began)."""
    record = _current.get()
    if record is not None:
        record.error_code = code


def note_generation(
    model: str, prompt_tokens: int, completion_tokens: int, ttft: float | None
) -> None:
    """Records what a request generated, for its access line."""
    record = _current.get()
    if record is not None:
        record.model, record.ttft = model, ttft
        record.prompt_tokens, record.completion_tokens = prompt_tokens, completion_tokens


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
        if given is None or not _REQUEST_ID.match(given):
            given = uuid.uuid4().hex
        record = _AccessRecord(id=given)
        token = _current.set(record)
        method, path = scope["method"], scope["path"]
        status = 500
        header = (REQUEST_ID_HEADER.encode(), record.id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), header]
                if method == "OPTIONS" and status == 204:
                    headers = _with_all_methods(scope, headers)
                message["headers"] = headers
            elif message["type"] == "http.response.body" and status >= 400:
                record.error_code = record.error_code or _error_code(message.get("body", b""))
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            if record.error_code == "client_closed":
                status = CLIENT_CLOSED
            seconds = time.perf_counter() - record.started
            user = getattr(scope.get("user"), "username", None)
            # Probes (HAProxy, the container's health check) ask every few seconds: their
            # answers are logged at debug level unless something is wrong.
            quiet = path in PROBED and status < 400
            logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "request",
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "status": status,
                        "user": user,
                        "model": record.model,
                        "prompt_tokens": record.prompt_tokens,
                        "completion_tokens": record.completion_tokens,
                        "ttft_ms": None if record.ttft is None else round(record.ttft * 1000, 1),
                        "duration_ms": round(seconds * 1000, 1),
                        "error": record.error_code,
                    }
                },
            )
            route = scope.get("path_template") or "unmatched"
            self._metrics.http(route, method, status, seconds)
            if record.error_code == "queue_full":
                self._metrics.queue_rejections.inc()
            _current.reset(token)


def _error_code(body: bytes) -> str | None:
    """The code (or else the type) of an error answer, OpenAI's or Anthropic's shape."""
    try:
        error = msgspec.json.decode(body).get("error")
    except (msgspec.DecodeError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return code if isinstance(code, str) else None


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
