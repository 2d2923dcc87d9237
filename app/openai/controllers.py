"""The ``/v1`` routes: parse, call the service, return its Struct."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, SkipValidation

from app.errors import error_responses
from app.openai.protocol import CompletionRequest, CompletionResponse, ModelList
from app.openai.serving import OpenAIService


class OpenAIController(Controller):
    """OpenAI-compatible endpoints."""

    path = "/v1"
    tags = ["OpenAI"]  # noqa: RUF012 - Litestar reads it as a class attribute

    @get(
        "/models",
        summary="List models",
        description="The models this service serves, in OpenAI's list shape.",
        responses=error_responses(401),
    )
    async def list_models(
        self, service: NamedDependency[SkipValidation[OpenAIService]]
    ) -> ModelList:
        return service.list_models()

    @post(
        "/completions",
        summary="Create a completion",
        description=(
            "Completes a prompt (or each of a list of prompts) with the served model. "
            "`finish_reason` is `length` when `max_tokens` or the context cut the text, `stop` "
            "when the model ended it or a stop sequence was reached. A prompt longer than the "
            "context is refused with `context_length_exceeded`; a `max_tokens` that does not fit "
            "after the prompt is reduced to what does."
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 503),
    )
    async def create_completion(
        self,
        data: Annotated[
            CompletionRequest,
            Body(
                examples=[
                    Example(
                        summary="Complete a sentence",
                        value={
                            "model": "tinyllama-1.1b",
                            "prompt": "The capital of France is",
                            "max_tokens": 32,
                            "temperature": 0.7,
                        },
                    )
                ]
            ),
        ],
        service: NamedDependency[SkipValidation[OpenAIService]],
    ) -> CompletionResponse:
        return await service.create_completion(data)
