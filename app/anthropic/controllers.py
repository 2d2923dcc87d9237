"""Anthropic's Messages API routes: parse, call the service, return.

Callers authenticate as on every route, with ``Authorization: Bearer`` or with ``x-api-key`` (what
the Anthropic SDK sends); ``anthropic-version`` is accepted and not needed. Errors on these routes
come in Anthropic's shape (``app.errors``).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Example
from litestar.params import Body, SkipValidation
from litestar.response import Stream

from app.anthropic.protocol import (
    CountTokensRequest,
    CountTokensResponse,
    Message,
    MessagesRequest,
)
from app.anthropic.serving import MessagesServing
from app.error_responses import error_responses
from app.openai.controllers import Admitted, admit_caller, event_stream

Messages = NamedDependency[SkipValidation[MessagesServing]]

_EXAMPLE = Example(
    summary="Ask a question",
    value={
        "model": "tinyllama-1.1b",
        "max_tokens": 64,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    },
)


class AnthropicController(Controller):
    """Anthropic-compatible endpoints."""

    path = "/v1/messages"
    tags = ["Anthropic"]  # noqa: RUF012 - Litestar reads it as a class attribute
    dependencies = {"caller": Provide(admit_caller)}  # noqa: RUF012

    @post(
        "/",
        summary="Create a message",
        description=(
            "Anthropic's Messages API: `system`, `messages` (content as a string or `text`, "
            "`tool_use` and `tool_result` blocks), `tools` (`input_schema`) and `tool_choice` "
            "(`auto`, `any`, `tool`, `none`; `disable_parallel_tool_use`), `max_tokens` "
            "(required), `stop_sequences`, `temperature`, `top_p`, `top_k`. Rendered with the "
            "model's own chat template; tool uses are held to their schema by a grammar as on "
            "`/v1/chat/completions`. With `stream: true`, server-sent events as Anthropic sends "
            "them (`message_start`, `content_block_start`/`_delta`/`_stop`, `message_delta`, "
            "`message_stop`, `ping`; an `error` event for a failure after the stream began). "
            "Authenticate with `x-api-key` or `Authorization: Bearer`. Errors come in "
            'Anthropic\'s shape: `{"type": "error", "error": {"type", "message"}}`.'
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 503),
    )
    async def create_message(
        self,
        data: Annotated[MessagesRequest, Body(examples=[_EXAMPLE])],
        anthropic_messages: Messages,
        caller: Admitted,
    ) -> Response[Message] | Stream:
        if data.stream:
            events, extra = await anthropic_messages.stream(data, caller)
            return event_stream(events, caller, extra)
        message, extra = await anthropic_messages.create(data, caller)
        return Response(message, headers=caller.headers() | extra)

    @post(
        "/count_tokens",
        summary="Count a message's input tokens",
        description="The tokens the prompt of such a `POST /v1/messages` request would take.",
        status_code=200,
        responses=error_responses(400, 401, 404, 503),
    )
    async def count_tokens(
        self,
        data: Annotated[CountTokensRequest, Body()],
        anthropic_messages: Messages,
        caller: Admitted,
    ) -> Response[CountTokensResponse]:
        return Response(
            await anthropic_messages.count_tokens(data, caller), headers=caller.headers()
        )
