"""The OpenAI routes (and llama.cpp's tokenizer routes): parse, call the service, return.

Every ``/v1`` route first admits its caller against their limits (the ``caller`` dependency,
which raises the 429s) and puts the caller's ``x-ratelimit-*`` headers on its answer; the
generation routes hand the caller to the service, which holds their slot, records their usage
and gives them their turn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from anyio import CancelScope
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, FromQuery, QueryParameter, SkipValidation
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from app.accounts.limits import Caller, Limits
from app.accounts.schemas import User
from app.error_responses import error_responses
from app.openai.protocol_chat import ChatCompletion, ChatCompletionRequest
from app.openai.protocol_completions import CompletionRequest, CompletionResponse
from app.openai.protocol_embeddings import EmbeddingList, EmbeddingRequest
from app.openai.protocol_models import (
    DetokenizeRequest,
    DetokenizeResponse,
    Model,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from app.openai.protocol_responses import Deleted, InputItemList, ResponseObject, ResponseRequest
from app.openai.serving_chat import ChatServing
from app.openai.serving_completions import CompletionServing
from app.openai.serving_embeddings import EmbeddingServing
from app.openai.serving_models import ModelServing
from app.openai.serving_responses import ResponsesServing

logger = logging.getLogger(__name__)

Chat = NamedDependency[SkipValidation[ChatServing]]
Completions = NamedDependency[SkipValidation[CompletionServing]]
Models = NamedDependency[SkipValidation[ModelServing]]
Responses = NamedDependency[SkipValidation[ResponsesServing]]
Embeddings = NamedDependency[SkipValidation[EmbeddingServing]]
Admitted = NamedDependency[SkipValidation[Caller]]


async def admit_caller(
    request: Request[User, Any, Any], limits: NamedDependency[SkipValidation[Limits]]
) -> Caller:
    """The signed-in user, counted against their limits (429 beyond them)."""
    return await limits.admit(request.user)


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


class _ClosingStreamingResponse(ASGIStreamingResponse):
    """Litestar's streaming response, closing its chunks however it ends: Litestar iterates
    them with a plain ``async for``, so chunks whose client left while one was being sent, or
    before the first, were left to the garbage collector, holding their slot meanwhile."""

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        try:
            await super().send_body(send, receive)
        finally:
            close = getattr(self.iterator, "aclose", None)
            if close is not None:
                with CancelScope(shield=True):
                    await close()


class ClosingStream(Stream):
    """A ``Stream`` whose chunks are closed when the response ends, however it ends."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        response.__class__ = _ClosingStreamingResponse  # same slots: only send_body differs
        return response


def event_stream(
    chunks: AsyncIterator[bytes], caller: Caller, extra: dict[str, str] | None = None
) -> Stream:
    """Server-sent events, unbuffered, with the caller's rate-limit headers (and ``extra``)."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **caller.headers()}
    return ClosingStream(chunks, media_type="text/event-stream", headers=headers | (extra or {}))


class OpenAIController(Controller):
    """OpenAI-compatible endpoints."""

    path = "/v1"
    tags = ["OpenAI"]  # noqa: RUF012 - Litestar reads it as a class attribute
    dependencies = {"caller": Provide(admit_caller)}  # noqa: RUF012

    @get(
        "/models",
        summary="List models",
        description="The models this service serves, in OpenAI's list shape.",
        responses=error_responses(401),
    )
    async def list_models(self, models: Models, caller: Admitted) -> Response[ModelList]:
        return Response(models.list_models(), headers=caller.headers())

    @get("/models/{model_id:str}", summary="Show a model", responses=error_responses(401, 404))
    async def get_model(
        self, model_id: FromPath[str], models: Models, caller: Admitted
    ) -> Response[Model]:
        return Response(models.get_model(model_id), headers=caller.headers())

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
        completions: Completions,
        caller: Admitted,
    ) -> Response[CompletionResponse] | Stream:
        if data.stream:
            return event_stream(await completions.stream(data, caller), caller)
        return Response(await completions.create(data, caller), headers=caller.headers())

    @post(
        "/chat/completions",
        summary="Create a chat completion",
        description=(
            "Replies to a conversation (`system`, `developer`, `user` and `assistant` messages; "
            "content as a string or text parts), rendered with the model's own chat template. "
            "`response_format` `json_object` or `json_schema` makes the output valid JSON (of "
            "that schema) with a llama.cpp grammar, unless `max_tokens` cuts it "
            "(`finish_reason: length`). `logprobs`/`top_logprobs` as in OpenAI. Tool calling: "
            "`tools` (functions with a JSON-schema `parameters`, `strict`), `tool_choice` "
            "(`auto`, `required`, a named function, `none`), `parallel_tool_calls`, and the "
            "legacy `functions`/`function_call`; a call the client forces is held to its "
            "function's schema by a grammar, and `auto` holds a call to it once the model opens "
            "one. Calls come back in `message.tool_calls` with `finish_reason: tool_calls`, and "
            "stream as OpenAI streams them." + _SAMPLING + _STREAMING
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
        chat: Chat,
        caller: Admitted,
    ) -> Response[ChatCompletion] | Stream:
        data, extra = await chat.fit(data, caller)
        if data.stream:
            return event_stream(await chat.stream(data, caller), caller, extra)
        return Response(await chat.create(data, caller), headers=caller.headers() | extra)

    @post(
        "/embeddings",
        summary="Create embeddings",
        description=(
            "Embeds `input` (a string, a list of strings, a list of token ids, or a list of such "
            "lists; at most 2048) with an embedding model (`kind: embedding` in /v1/models): one "
            "L2-normalised vector per input, in input order. `encoding_format` `float` or "
            "`base64` (little-endian float32, what the `openai` SDK asks for); `dimensions` keeps "
            "the first n and normalises again. An input longer than the model's context is a 400 "
            "naming it (never cut); a chat model is a 400. Usage counts the input tokens, which "
            "count against the daily token limit."
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 503),
    )
    async def create_embeddings(
        self,
        data: Annotated[
            EmbeddingRequest,
            Body(
                examples=[
                    Example(
                        summary="Embed two passages",
                        value={
                            "model": "all-minilm-l6-v2",
                            "input": ["The cat sat on the mat.", "A feline rested on a rug."],
                        },
                    )
                ]
            ),
        ],
        embeddings: Embeddings,
        caller: Admitted,
    ) -> Response[EmbeddingList]:
        return Response(await embeddings.create(data, caller), headers=caller.headers())


class ResponsesController(Controller):
    """OpenAI's Responses API, with responses stored per user."""

    path = "/v1/responses"
    tags = ["OpenAI Responses"]  # noqa: RUF012
    dependencies = {"caller": Provide(admit_caller)}  # noqa: RUF012

    @post(
        "/",
        summary="Create a response",
        description=(
            "`input` as a string or items (messages with `input_text` parts, `function_call`, "
            "`function_call_output`), `instructions`, function `tools`, `tool_choice`, "
            "`parallel_tool_calls`, `text.format` (`text`, `json_object`, `json_schema`), "
            "`max_output_tokens`, `temperature`, `top_p`, `seed`, `metadata`. `store` (default "
            "true) keeps the response for you alone (GET, input items, `previous_response_id`, "
            "for `APP_RESPONSES_RETENTION_DAYS`); `previous_response_id` continues from a stored "
            "response, reusing what the engine cached of it. `background: true` answers at once "
            "(`queued`); poll GET, or cancel. With `stream: true`, typed server-sent events "
            "(`response.created` ... `response.completed`), each with a `sequence_number`."
        ),
        status_code=200,
        responses=error_responses(400, 401, 404, 413, 503),
    )
    async def create_response(
        self,
        data: Annotated[
            ResponseRequest,
            Body(
                examples=[
                    Example(
                        summary="Ask a question",
                        value={
                            "model": "tinyllama-1.1b",
                            "instructions": "You are a helpful assistant.",
                            "input": "What is the capital of France?",
                            "max_output_tokens": 64,
                        },
                    )
                ]
            ),
        ],
        responses: Responses,
        caller: Admitted,
    ) -> Response[ResponseObject] | Stream:
        if data.stream:
            events, extra = await responses.stream(data, caller)
            return event_stream(events, caller, extra)
        response, extra = await responses.create(data, caller)
        return Response(response, headers=caller.headers() | extra)

    @get(
        "/{response_id:str}",
        summary="Get a stored response",
        responses=error_responses(401, 404),
    )
    async def get_response(
        self, response_id: FromPath[str], responses: Responses, caller: Admitted
    ) -> Response[ResponseObject]:
        return Response(await responses.retrieve(response_id, caller), headers=caller.headers())

    @delete(
        "/{response_id:str}",
        summary="Delete a stored response",
        status_code=200,
        responses=error_responses(401, 404),
    )
    async def delete_response(
        self, response_id: FromPath[str], responses: Responses, caller: Admitted
    ) -> Response[Deleted]:
        return Response(await responses.delete(response_id, caller), headers=caller.headers())

    @get(
        "/{response_id:str}/input_items",
        summary="List a stored response's input items",
        responses=error_responses(400, 401, 404),
    )
    async def list_input_items(
        self,
        response_id: FromPath[str],
        responses: Responses,
        caller: Admitted,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
    ) -> Response[InputItemList]:
        items = await responses.input_items(
            response_id, caller, order=order, limit=limit, after=after
        )
        return Response(items, headers=caller.headers())

    @post(
        "/{response_id:str}/cancel",
        summary="Cancel a background response",
        description="Stops its generation (freeing its slot); answers the response as it is.",
        status_code=200,
        responses=error_responses(400, 401, 404),
    )
    async def cancel_response(
        self, response_id: FromPath[str], responses: Responses, caller: Admitted
    ) -> Response[ResponseObject]:
        return Response(await responses.cancel(response_id, caller), headers=caller.headers())


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
        self, data: Annotated[TokenizeRequest, Body()], models: Models
    ) -> TokenizeResponse:
        return await models.tokenize(data)

    @post(
        "/detokenize",
        summary="Detokenize token ids",
        status_code=200,
        responses=error_responses(400, 401, 404, 503),
    )
    async def detokenize(
        self, data: Annotated[DetokenizeRequest, Body()], models: Models
    ) -> DetokenizeResponse:
        return await models.detokenize(data)
