"""``/v1/chat/completions``: replies to a conversation, as one answer or as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from app.accounts.limits import Caller
from app.inference.engine import (
    ChatMessage,
    Engine,
    Finished,
    GenerationEvent,
    SamplingParams,
    TokenLogprob,
)
from app.inference.grammars import json_object_grammar, json_schema_grammar
from app.openai.protocol import Usage, new_id, now
from app.openai.protocol_chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    JsonObjectFormat,
    JsonSchemaFormat,
    TokenLogprobView,
    TopLogprobView,
)
from app.openai.serving_base import Job, OpenAIServing, collect, sse, started, stream, usage_of


class ChatServing(OpenAIServing):
    """Replies to the conversation ``n`` times."""

    async def _job(self, request: ChatCompletionRequest, caller: Caller) -> Job:
        request.check_supported()
        grammar = None
        if isinstance(request.response_format, JsonObjectFormat):
            grammar = json_object_grammar()
        elif isinstance(request.response_format, JsonSchemaFormat):
            schema = request.response_format.json_schema.schema
            grammar = await asyncio.to_thread(json_schema_grammar, schema or {"type": "object"})

        async def prepare(engine: Engine) -> tuple[list[list[int]], SamplingParams]:
            params = request.sampling_params(
                self._defaults,
                vocab_size=engine.vocab_size,
                logprobs=request.top_logprob_count(),
                grammar=grammar,
            )
            messages = [
                ChatMessage("system" if m.role == "developer" else m.role, m.text())
                for m in request.messages
            ]
            return [await engine.tokenize_chat(messages)], params

        return await self._new_job(caller, request.model, request.n or 1, prepare)

    async def create(self, request: ChatCompletionRequest, caller: Caller) -> ChatCompletion:
        """The whole answer."""
        job = await self._job(request, caller)
        choices = await collect(job)
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=job.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=c.text),
                    logprobs=_logprobs(c.logprobs) if request.logprobs else None,
                    finish_reason=c.done.reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage_of(job, choices),
        )

    async def stream(self, request: ChatCompletionRequest, caller: Caller) -> AsyncIterator[bytes]:
        """Server-sent events of ``chat.completion.chunk``s, then ``[DONE]``."""
        job = await self._job(request, caller)
        events = await started(job)
        response_id, created = new_id("chatcmpl"), now()

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
            return sse(
                ChatCompletionChunk(
                    id=response_id,
                    created=created,
                    model=job.model,
                    choices=choices,
                    usage=usage if request.include_usage else msgspec.UNSET,
                )
            )

        def on_event(index: int, event: GenerationEvent) -> bytes:
            if isinstance(event, Finished):
                return chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=event.reason)])
            logprobs = _logprobs(list(event.logprobs)) if request.logprobs else None
            return chunk(
                [ChunkChoice(index=index, delta=Delta(content=event.text), logprobs=logprobs)]
            )

        roles = chunk(
            [
                ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
                for i in range(job.choices)
            ]
        )
        return stream(
            job, events, on_event, lambda usage: chunk([], usage), request.include_usage, roles
        )


def _logprobs(tokens: list[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobView(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.bytes),
                top_logprobs=[
                    TopLogprobView(token=a.token, logprob=a.logprob, bytes=list(a.bytes))
                    for a in t.top
                ],
            )
            for t in tokens
        ]
    )
