"""Logging: JSON lines off a terminal, readable lines on one, and a request id in every line.

Every HTTP request gets a ``RequestLog`` (its id taken from ``X-Request-ID`` or made) in a context
variable; a logging filter stamps its id on each record logged while the request runs, and the
layers that know more (the auth middleware, the OpenAI service) fill in the user, model, token
counts and time to first token for the one access line written when the response is done.

Nothing here logs headers or bodies: passwords, tokens, API keys and ``Authorization`` stay out.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

LogFormat = Literal["auto", "json", "text"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}\Z")


@dataclass
class RequestLog:
    """What the access line of one request says."""

    id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    user: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token: float | None = None  # perf_counter() when the first token went out
    error_code: str | None = None
    account: Any = None  # the authenticated User, once the rate limits have seen it
    rate_headers: list[tuple[str, str]] = field(default_factory=list)  # x-ratelimit-*
    on_end: list[Callable[[], None]] = field(default_factory=list)  # run when the response ends

    def token_out(self) -> None:
        """Marks the first generated token (later calls change nothing)."""
        if self.first_token is None:
            self.first_token = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


_current: ContextVar[RequestLog | None] = ContextVar("request_log", default=None)


def current_request() -> RequestLog | None:
    """The request being served in this context, if any."""
    return _current.get()


def note_error(code: str | None) -> None:
    """Records the error a request is answered with, for its access line."""
    log = _current.get()
    if log is not None:
        log.error_code = code


def begin_request(request_id: str | None, method: str, path: str) -> tuple[RequestLog, object]:
    """Starts a request's log; ``request_id`` is the client's, kept when it is sane."""
    if request_id is None or not _REQUEST_ID.match(request_id):
        request_id = uuid.uuid4().hex
    log = RequestLog(id=request_id, method=method, path=path)
    return log, _current.set(log)


def end_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        log = _current.get()
        record.request_id = log.id if log is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id and any ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ... [request id]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line += f" [{request_id}]"
        return line


def configure_logging(level: str, fmt: LogFormat = "auto") -> None:
    """Sends every logger (uvicorn's and huggingface_hub's included) through one handler."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that install their own handlers: route their records through ours instead.
    for name in ("huggingface_hub", "uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    # The Hub client's HTTP library logs every request at INFO; its failures reach us anyway.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
