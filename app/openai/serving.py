"""The OpenAI endpoints' logic, with no HTTP in it: requests in, response Structs out."""

from __future__ import annotations

import asyncio

import msgspec

from app.errors import ContextLengthExceeded, InvalidRequest
from app.inference.engine import Engine, Finished, SamplingParams, TextDelta
from app.inference.host import ModelHost
from app.openai.protocol import (
    MAX_CHOICES_PER_REQUEST,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Model,
    ModelList,
    SamplingDefaults,
    Usage,
    new_id,
    now,
)


class OpenAIService:
    """Completions and model listing over the served model."""

    def __init__(self, host: ModelHost, defaults: SamplingDefaults, owned_by: str) -> None:
        self._host = host
        self._defaults = defaults
        self._owned_by = owned_by
        self._created = now()

    def list_models(self) -> ModelList:
        """The served model, whether or not it has finished loading."""
        return ModelList(
            data=[Model(id=self._host.model_id, created=self._created, owned_by=self._owned_by)]
        )

    async def create_completion(self, request: CompletionRequest) -> CompletionResponse:
        """Completes every prompt ``n`` times; validates all prompts before generating."""
        engine = self._host.engine(request.model)
        params = request.to_sampling_params(self._defaults)
        prompts = await asyncio.gather(*(engine.tokenize(p) for p in request.prompts()))
        for tokens in prompts:
            _check_fits(tokens, engine.context_size)

        n = request.n or 1
        if n * len(prompts) > MAX_CHOICES_PER_REQUEST:
            raise InvalidRequest(
                f"At most {MAX_CHOICES_PER_REQUEST} choices per request; {len(prompts)} prompts "
                f"times n={n} is more.",
                param="n",
            )
        # A TaskGroup cancels the sibling generations (freeing the engine) if one fails or the
        # client goes away.
        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(_complete(engine, tokens, _choice_params(params, j)))
                for tokens in prompts
                for j in range(n)
            ]
        results = [run.result() for run in runs]
        choices = [
            CompletionChoice(text=text, index=i, finish_reason=finished.reason)
            for i, (text, finished) in enumerate(results)
        ]
        prompt_tokens = sum(len(tokens) for tokens in prompts)
        completion_tokens = sum(finished.completion_tokens for _, finished in results)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=request.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )


def _check_fits(tokens: list[int], context_size: int) -> None:
    if not tokens:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    if len(tokens) >= context_size:
        raise ContextLengthExceeded(prompt_tokens=len(tokens), context_size=context_size)


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """With a seed and ``n`` > 1, each choice gets its own (still repeatable) seed."""
    if index == 0 or params.seed is None:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


async def _complete(
    engine: Engine, tokens: list[int], params: SamplingParams
) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in engine.generate(tokens, params):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("the engine ended a generation without a Finished event")
