"""llama.cpp's own log, routed through Python's logging: errors only, one bounded line each.

llama.cpp writes every load step to stderr, and on a grammar it cannot parse it prints the whole
grammar (as large as a client's schema makes it); each such message becomes one line of at most
``_MAX_CHARS`` characters on the ``llama.cpp`` logger instead.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

logger = logging.getLogger("llama.cpp")

_MAX_CHARS = 300
_ERROR = 3  # GGML_LOG_LEVEL_ERROR
_CONTINUATION = 5  # GGML_LOG_LEVEL_CONT: the rest of the previous message


class _State:
    level = 0


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward(level: int, text: bytes, _: ctypes.c_void_p) -> None:
    if level != _CONTINUATION:
        _State.level = level
    if _State.level != _ERROR or level == _CONTINUATION:
        return
    message = text.decode("utf-8", errors="replace").strip()
    if message:
        if len(message) > _MAX_CHARS:
            message = message[:_MAX_CHARS] + f"... ({len(message)} characters)"
        logger.error("%s", message)


def route_llama_log() -> None:
    """Sends llama.cpp's errors to the ``llama.cpp`` logger and drops the rest."""
    llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))
