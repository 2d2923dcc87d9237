"""``/v1/completions``: prompts completed, as one answer or as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from app.accounts.limits import Caller
from app.errors import InvalidRequest
from app.inference.engine import Engine, Finished, GenerationEvent, SamplingParams, TokenLogprob
from app.openai.protocol import Usage, new_id, now
from app.openai.protocol_completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from app.openai.serving_base import Job, OpenAIServing, collect, sse, started, stream, usage_of


class CompletionServing(OpenAIServing):
    """Completes every prompt ``n`` times."""

    async def _job(self, request: CompletionRequest, caller: Caller) -> Job:
        request.check_supported()

        async def prepare(engine: Engine) -> tuple[list[list[int]], SamplingParams]:
            params = request.sampling_params(
                self._defaults, vocab_size=engine.vocab_size, logprobs=request.logprobs
            )
            prompts = list(await asyncio.gather(*(_encoded(engine, p) for p in request.prompts())))
            return prompts, params

        return await self._new_job(caller, request.model, request.n or 1, prepare)

    async def create(self, request: CompletionRequest, caller: Caller) -> CompletionResponse:
        """The whole answer."""
        job = await self._job(request, caller)
        choices = await collect(job)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=job.model,
            choices=[
                CompletionChoice(
                    text=c.text,
                    index=i,
                    logprobs=_logprobs(c.logprobs, 0) if request.logprobs is not None else None,
                    finish_reason=c.done.reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=usage_of(job, choices),
        )

    async def stream(self, request: CompletionRequest, caller: Caller) -> AsyncIterator[bytes]:
        """Server-sent events of ``text_completion`` chunks, then ``[DONE]``."""
        job = await self._job(request, caller)
        events = await started(job)
        response_id, created = new_id("cmpl"), now()
        offsets = [0] * job.choices

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return sse(
                CompletionResponse(
                    id=response_id,
                    created=created,
                    model=job.model,
                    choices=choices,
                    usage=usage if request.include_usage else msgspec.UNSET,
                )
            )

        def on_event(index: int, event: GenerationEvent) -> bytes:
            if isinstance(event, Finished):
                choice = CompletionChoice(text="", index=index, finish_reason=event.reason)
                return chunk([choice])
            logprobs = None
            if request.logprobs is not None:
                logprobs = _logprobs(list(event.logprobs), offsets[index])
            offsets[index] += len(event.text)
            choice = CompletionChoice(
                text=event.text, index=index, logprobs=logprobs, finish_reason=None
            )
            return chunk([choice])

        return stream(job, events, on_event, lambda usage: chunk([], usage), request.include_usage)


async def _encoded(engine: Engine, prompt: str | list[int]) -> list[int]:
    """A prompt's tokens: a text tokenized, or token ids checked against the vocabulary."""
    if isinstance(prompt, str):
        return await engine.tokenize(prompt)
    if any(not 0 <= token < engine.vocab_size for token in prompt):
        raise InvalidRequest(f"Token ids run from 0 to {engine.vocab_size - 1}.", param="prompt")
    return prompt


def _logprobs(tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{a.token: a.logprob for a in t.top} for t in tokens],
        text_offset=offsets,
    )
