"""The typed errors services raise: what a client can cause or must be told about, each with
its status, OpenAI error type and code. ``app.error_responses`` turns them into responses."""

from __future__ import annotations

import math
from typing import ClassVar


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
