"""Bounds on connections, for uvicorn: how long a client may take to send its request headers,
how many connections may be open at once, and a quiet log when the process runs out of file
descriptors.

uvicorn keeps a connection that never finishes its request headers open indefinitely (slowloris),
and a process at its descriptor limit then cannot accept ``/health``, while every failed
``accept()`` is logged with a traceback. Here a connection gets ``header_timeout`` seconds from
its first byte (or from connecting) to the end of its headers, connections beyond
``max_connections`` are closed as they arrive (before they can pile up), the descriptor limit is
raised to what the system allows, and accept errors are logged once per minute.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# Connections waiting to be accepted (the listen backlog). asyncio accepts up to this many in one
# go, and a refused connection's descriptor is closed two loop iterations later, so a few such
# bursts are kept free too.
BACKLOG = 128
# Descriptors kept back from connections: the model file, the database, logs, accept bursts.
_RESERVED_DESCRIPTORS = 64 + 3 * BACKLOG
_LOG_INTERVAL = 60.0


class _Once:
    """Lets a message through at most once per interval, counting what it held back."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self._interval = interval
        self._last = -interval
        self.held_back = 0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._interval:
            self.held_back += 1
            return False
        self._last = now
        return True


def http_protocol(*, header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with a request-header deadline and a connection cap."""
    refusals = _Once()

    class GuardedHttpProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                if refusals.due():
                    logger.warning(
                        "refusing connections: %d are open, the most APP_MAX_CONNECTIONS allows "
                        "(%d refused since the last such line)",
                        max_connections,
                        refusals.held_back,
                    )
                    refusals.held_back = 0
                transport.abort()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a kept-alive connection's next request starts its own deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpProtocol


def connection_cap(wanted: int) -> int:
    """Raises the descriptor limit as far as the system allows; returns how many connections
    fit under it (``wanted``, or fewer with a warning)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = wanted + _RESERVED_DESCRIPTORS
        if hard != resource.RLIM_INFINITY:
            target = min(target, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    fits = max(1, int(soft) - _RESERVED_DESCRIPTORS)
    if fits < wanted:
        logger.warning(
            "the file descriptor limit (%d) allows only %d connections, fewer than "
            "APP_MAX_CONNECTIONS=%d; raise it with 'ulimit -n' or the service manager",
            soft,
            fits,
            wanted,
        )
    return min(wanted, fits)


class QuietAcceptErrors(logging.Filter):
    """Lets one failed-``accept()`` error through per minute (they come in floods)."""

    def __init__(self) -> None:
        super().__init__()
        self._once = _Once()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_accept_error(record):
            return True
        if not self._once.due():
            return False
        record.exc_info = None  # one line, no traceback
        record.exc_text = None
        record.msg = f"{record.getMessage()} (out of file descriptors?); {self._once.held_back} "
        record.msg += "more such errors held back since the last line"
        record.args = ()
        self._once.held_back = 0
        return True


def _is_accept_error(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    # asyncio: "socket.accept() out of system resource", and after it the retry of
    # "_start_serving" that fails if the server closed meanwhile.
    if "accept" in message.lower() or "_start_serving" in message:
        return True
    exc: Any = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, OSError) and exc.errno in (23, 24)  # ENFILE, EMFILE
