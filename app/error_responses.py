"""The one place that turns any exception into an error response in the protocol's shape.

``exception_handlers`` maps the typed errors of ``app.errors`` (and Litestar's own HTTP errors)
to OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with the right status, or, on
the Anthropic Messages routes, to Anthropic's ``{"type": "error", "error": {...}}``. Anything
unexpected becomes a 500 that says nothing internal; its traceback is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from app.anthropic.protocol import AnthropicError, AnthropicErrorBody
from app.errors import ServiceError
from app.validation import located

logger = logging.getLogger(__name__)


class ErrorDetail(msgspec.Struct):
    """The body of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct):
    """What every failed request returns."""

    error: ErrorDetail


_RESPONSE_DESCRIPTIONS = {
    400: "Invalid request: the message and `param` name the offending field.",
    401: "Missing, invalid or expired credentials (`WWW-Authenticate: Bearer`).",
    403: "Valid credentials without the right to do this.",
    409: "The username is taken.",
    404: "Unknown model (`model_not_found`).",
    413: "The request body is too large.",
    429: "Too many requests or failed logins; retry after `Retry-After` seconds.",
    503: "The model is still downloading or loading; retry after `Retry-After` seconds.",
}


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the error responses a route can give."""
    return {
        code: ResponseSpec(
            data_container=ErrorResponse,
            description=_RESPONSE_DESCRIPTIONS[code],
            generate_examples=False,
        )
        for code in status_codes
    }


# Litestar's status codes for which OpenAI has a matching error type.
_HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


def error_response(
    status_code: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorResponse]:
    """A response in OpenAI's error shape."""
    return Response(
        ErrorResponse(ErrorDetail(message=message, type=error_type, param=param, code=code)),
        status_code=status_code,
        headers=headers,
    )


def _service_error(_: Request[Any, Any, Any], exc: ServiceError) -> Response[ErrorResponse]:
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers() or None,
    )


def _validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorResponse]:
    """Body, query and path validation failures: a 400 that names the offending field."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    key = first.get("key")
    param, detail = located(
        str(first.get("message") or exc.detail), key if isinstance(key, str) else None
    )
    if "missing required field" in detail:
        message = f"Missing required field '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {detail}"
    elif "malformed" in detail.lower() or "decode" in detail.lower():
        message = f"We could not parse the JSON body of your request: {detail}"
    else:
        message = f"Invalid request body: {detail}"
    return error_response(400, message, param=param)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    headers = dict(exc.headers or {})
    detail = exc.detail
    if status == 404 and detail == "Not Found":  # Litestar's router: no such route
        detail = f"There is no route {request.method} {request.url.path}; see /docs for the API."
    elif status == 405 and detail == "Method Not Allowed":
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API."
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    fallback = "invalid_request_error" if status < 500 else "server_error"
    return error_response(
        status,
        detail,
        error_type=_HTTP_ERROR_TYPES.get(status, fallback),
        code="invalid_api_key" if status == 401 else None,
        headers=headers or None,
    )


def _undecodable_body(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    """What msgspec raises past Litestar's JSON error handling: bad UTF-8, absurd nesting."""
    if isinstance(exc, UnicodeDecodeError):
        message = "The request body is not valid UTF-8."
    else:
        message = "The JSON body is nested too deeply to parse."
    return error_response(400, message)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request.",
        error_type="server_error",
    )


# Anthropic's error types by status, for the routes of its Messages API.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
ANTHROPIC_PATH = "/v1/messages"


def anthropic_error_type(status_code: int) -> str:
    """Anthropic's error type for an HTTP status."""
    fallback = "api_error" if status_code >= 500 else "invalid_request_error"
    return _ANTHROPIC_ERROR_TYPES.get(status_code, fallback)


def _in_protocol_shape(
    handler: Callable[[Request[Any, Any, Any], Any], Response[ErrorResponse]],
) -> Callable[[Request[Any, Any, Any], Any], Response[Any]]:
    """``handler``, answering in Anthropic's shape on the Messages API's routes."""

    def handle(request: Request[Any, Any, Any], exc: Any) -> Response[Any]:
        response = handler(request, exc)
        path = request.scope.get("path", "")
        if path != ANTHROPIC_PATH and not path.startswith(ANTHROPIC_PATH + "/"):
            return response
        status = response.status_code or HTTP_500_INTERNAL_SERVER_ERROR
        body = AnthropicErrorBody(anthropic_error_type(status), response.content.error.message)
        return Response(AnthropicError(body), status_code=status, headers=response.headers)

    return handle


exception_handlers: ExceptionHandlersMap = {
    ServiceError: _in_protocol_shape(_service_error),
    ValidationException: _in_protocol_shape(_validation_error),
    HTTPException: _in_protocol_shape(_http_error),
    UnicodeDecodeError: _in_protocol_shape(_undecodable_body),
    RecursionError: _in_protocol_shape(_undecodable_body),
    Exception: _in_protocol_shape(_unexpected_error),
}
