"""The OpenAI routes (and llama.cpp's tokenizer routes): parse, call the service, return."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, SkipValidation
from litestar.response import Stream

from app.accounts.usage import within_limits
from app.errors import error_responses
from app.openai.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    Model,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from app.openai.serving import OpenAIService

Service = NamedDependency[SkipValidation[OpenAIService]]

_STREAMING = (
    " With `stream: true` the answer is server-sent events (`data: {chunk}` lines, then "
    '`data: [DONE]`); `stream_options: {"include_usage": true}` adds a last chunk with the '
    'usage. An error after the stream began arrives as a `data: {"error": ...}` event.'
)
_SAMPLING = (
    " Sampling: `temperature` (0 is greedy), `top_p`, `seed`, `stop` (up to 4; not returned), "
    "`presence_penalty`, `frequency_penalty`, `logit_bias`, `n`, and llama.cpp's `top_k` "
    "(default 40), `min_p` (default 0.05) and `repeat_penalty`. A prompt longer than the context "
    "is refused with `context_length_exceeded`; a `max_tokens` that does not fit after the prompt "
    "is reduced to what does."
)


def _sse(chunks: AsyncIterator[bytes]) -> Stream:
    return Stream(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class OpenAIController(Controller):
    """OpenAI-compatible endpoints."""

    path = "/v1"
    tags = ["OpenAI"]  # noqa: RUF012 - Litestar reads it as a class attribute
    guards = [within_limits]  # noqa: RUF012

    @get(
        "/models",
        summary="List models",
        description="The models this service serves, in OpenAI's list shape.",
        responses=error_responses(401),
    )
    async def list_models(self, service: Service) -> ModelList:
        return service.list_models()

    @get("/models/{model_id:str}", summary="Show a model", responses=error_responses(401, 404))
    async def get_model(self, model_id: FromPath[str], service: Service) -> Model:
        return service.get_model(model_id)

    @post(
        "/completions",
        summary="Create a completion",
        description=(
            "Completes a prompt (or each of a list of prompts) with the served model. "
            "`finish_reason` is `length` when `max_tokens` or the context cut the text, `stop` "
            "when the model ended it or a stop sequence was reached. `logprobs: k` returns each "
            "token's log probability and the k likeliest alternatives. `echo` and `suffix` are "
            "not supported." + _SAMPLING + _STREAMING
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 503),
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
        service: Service,
    ) -> Response[CompletionResponse] | Stream:
        if data.stream:
            return _sse(await service.stream_completion(data))
        return Response(await service.create_completion(data))

    @post(
        "/chat/completions",
        summary="Create a chat completion",
        description=(
            "Replies to a conversation (`system`, `developer`, `user` and `assistant` messages; "
            "content as a string or text parts), rendered with the model's own chat template. "
            "`response_format` `json_object` or `json_schema` makes the output valid JSON (of "
            "that schema) with a llama.cpp grammar, unless `max_tokens` cuts it "
            "(`finish_reason: length`). `logprobs`/`top_logprobs` as in OpenAI. Tools are not "
            "supported." + _SAMPLING + _STREAMING
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 503),
    )
    async def create_chat_completion(
        self,
        data: Annotated[
            ChatCompletionRequest,
            Body(
                examples=[
                    Example(
                        summary="Ask a question",
                        value={
                            "model": "tinyllama-1.1b",
                            "messages": [
                                {"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": "What is the capital of France?"},
                            ],
                            "max_tokens": 64,
                        },
                    )
                ]
            ),
        ],
        service: Service,
    ) -> Response[ChatCompletion] | Stream:
        if data.stream:
            return _sse(await service.stream_chat_completion(data))
        return Response(await service.create_chat_completion(data))


class TokenizerController(Controller):
    """llama.cpp server's tokenizer endpoints."""

    tags = ["Tokenizer"]  # noqa: RUF012

    @post(
        "/tokenize",
        summary="Tokenize text",
        description="The model's token ids for `content` (`add_special`: BOS if the model wants).",
        status_code=200,
        responses=error_responses(400, 401, 404, 503),
    )
    async def tokenize(
        self, data: Annotated[TokenizeRequest, Body()], service: Service
    ) -> TokenizeResponse:
        return await service.tokenize(data)

    @post(
        "/detokenize",
        summary="Detokenize token ids",
        status_code=200,
        responses=error_responses(400, 401, 404, 503),
    )
    async def detokenize(
        self, data: Annotated[DetokenizeRequest, Body()], service: Service
    ) -> DetokenizeResponse:
        return await service.detokenize(data)
