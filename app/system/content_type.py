"""Requests whose declared content type does not fit the route: a 415 before the handler."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.enums import RequestEncodingType

from app.errors import UnsupportedMediaType


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """``before_request``: a route that reads a JSON body refuses other declared content types.

    Litestar parses a JSON body whatever the ``Content-Type`` says; a form or a text body sent
    to a JSON route is a client mistake (or a cross-site form post) and gets a 415. A request
    without a ``Content-Type`` is read as JSON, as many hand-written clients send it.
    """
    handler = request.route_handler
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    media_type = getattr(data.kwarg_definition, "media_type", RequestEncodingType.JSON)
    if media_type != RequestEncodingType.JSON:
        return
    declared = request.headers.get("content-type")
    if declared is None:
        return
    essence = declared.split(";", 1)[0].strip().lower()
    if essence != "application/json" and not essence.endswith("+json"):
        raise UnsupportedMediaType(essence)
