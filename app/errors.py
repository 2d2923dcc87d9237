"""Domain errors and the one place that turns any exception into OpenAI's error shape.

Services raise the typed errors below; ``exception_handlers`` maps them (and Litestar's own HTTP
errors) to ``{"error": {"message", "type", "param", "code"}}`` with the right status. Anything
unexpected becomes a 500 that says nothing internal; its traceback is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

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


class ServiceError(Exception):
    """Base of the errors a client can cause or must be told about."""

    status_code: ClassVar[int] = 400
    error_type: ClassVar[str] = "invalid_request_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs."""
        return {}


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something invalid or unsupported."""


class WrongPassword(InvalidRequest):
    """The current password given to confirm a change is wrong."""

    def __init__(self) -> None:
        super().__init__("The current password is wrong.", param="current_password")


class ContextLengthExceeded(ServiceError):
    """The prompt does not fit the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, *, prompt_tokens: int, context_size: int, param: str = "prompt") -> None:
        super().__init__(
            f"This model's maximum context length is {context_size} tokens, however you "
            f"requested {prompt_tokens} tokens in the prompt (at least one more is needed for "
            "the completion). Please shorten the prompt.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size


class ModelNotFound(ServiceError):
    """The request names a model this service does not serve."""

    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class ModelNotReady(ServiceError):
    """The model is still downloading or loading, or failed to load."""

    status_code = 503
    error_type = "unavailable_error"
    code = "model_not_ready"

    def __init__(self, model: str, state: str, error: str | None = None) -> None:
        if error is not None:
            super().__init__(f"The model '{model}' cannot be served: {error}")
        else:
            super().__init__(
                f"The model '{model}' is not ready yet (state: {state}). Retry shortly."
            )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class NotAuthenticated(ServiceError):
    """No valid credentials: missing, wrong, expired, revoked, or for a disabled account."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class InvalidCredentials(NotAuthenticated):
    """A login with a wrong username or password (which of the two is never said)."""

    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("Incorrect username or password.")


class PermissionDenied(ServiceError):
    """Valid credentials, but not for this."""

    status_code = 403
    error_type = "permission_error"


class NotFound(ServiceError):
    """The named object (a user, an API key) does not exist, or is not the caller's."""

    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request clashes with what exists, such as a username already taken."""

    status_code = 409
    code = "conflict"


class TooManyAttempts(ServiceError):
    """Too many failed logins for one username or client address; retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "too_many_login_attempts"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed logins. Try again in {retry_after} seconds.")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QueueFull(ServiceError):
    """Every slot is busy and the queue is full, or the request waited too long for a slot."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, retry_after: int, *, waited: bool = False) -> None:
        super().__init__(
            "The server waited too long for a free generation slot; retry later."
            if waited
            else "The server is busy: every generation slot is taken and the queue is full."
        )
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(ServiceError):
    """A user went past one of their limits."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.rate_headers = headers

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), **self.rate_headers}


class RequestRateLimited(RateLimited):
    """Past the user's requests per minute (OpenAI's error type ``requests``)."""

    error_type = "requests"


class TokenRateLimited(RateLimited):
    """Past the user's generated tokens per day (OpenAI's error type ``tokens``)."""

    error_type = "tokens"


class UnsupportedMediaType(ServiceError):
    """A JSON route was sent something else."""

    status_code = 415

    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"This endpoint takes a JSON body; send it with 'Content-Type: application/json' "
            f"(not {content_type!r})."
        )


class EngineStopping(ServiceError):
    """The server is shutting down and takes no new generations."""

    status_code = 503
    error_type = "unavailable_error"
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down; retry on another instance or later.")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "10"}


class LimitsUnavailable(ServiceError):
    """The shared store of the limits (Valkey/Redis) does not answer: fail closed."""

    status_code = 503
    error_type = "unavailable_error"
    code = "limits_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The service cannot check your limits right now (its limits store does not "
            "answer); retry shortly."
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class DatabaseDown(ServiceError):
    """The database does not answer (a server stopped or restarting, no free connection): the
    statement that met it was not committed (``app.db`` raises this)."""

    status_code = 503
    error_type = "unavailable_error"
    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__("The service cannot reach its database right now; retry shortly.")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class ModelUnavailable(Exception):
    """The model file cannot be obtained or loaded; stops the start with this one sentence."""


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


class AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct, tag="error", tag_field="type"):
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``."""

    error: AnthropicErrorBody


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
