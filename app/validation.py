"""One reading of msgspec's validation messages: where in the data, and what is wrong.

msgspec says ``Expected `int`, got `str` - at `$.models[1].id``` or ``Object missing required
field `model` - at `$.messages[0]```; Litestar hands the two halves over separately (a message
and a key such as ``$.stop[5]`` or ``data.logit_bias[...]``). Settings, the models file, the
command line and the API errors all name the offending field from these, so they read them here.
"""

from __future__ import annotations

import re

import msgspec

_MISSING = re.compile(r"missing required field `([^`]+)`")


def field_path(key: str | None) -> str | None:
    """``$.stop[5]``, ``data.messages[0].role`` or ``logit_bias[...]`` as the field a client can
    fix (``stop[5]``, ``messages[0].role``, ``logit_bias``); None for the whole document."""
    if not key or key in ("$", "data"):
        return None
    path = key.removeprefix("$").removeprefix(".").removeprefix("data.")
    return path.replace("[...]", "") or None


def located(message: str, key: str | None = None) -> tuple[str | None, str]:
    """``(path, detail)`` of a validation message: the field it is about (with a missing
    field's own name appended) and what is wrong. ``key`` is the location when it was given
    apart from the message."""
    detail, sep, where = message.rpartition(" - at `")
    if sep:
        key = where.rstrip("`")
    else:
        detail = message
    path = field_path(key)
    missing = _MISSING.search(detail)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path, detail


def describe(exc: msgspec.ValidationError) -> str:
    """``path: detail``, or the detail alone for the whole document."""
    path, detail = located(str(exc))
    return f"{path}: {detail}" if path else detail
