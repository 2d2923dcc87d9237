"""The OpenAI endpoints' logic, with no HTTP in it: requests in, Structs or SSE bytes out.

Everything that can be refused is checked before the first token is generated (and, when
streaming, before the first byte is sent), so such errors are ordinary HTTP errors. What fails
after a stream began is sent as an ``error`` event, which the ``openai`` SDK raises as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from app.accounts.usage import UsageLimits
from app.errors import (
    ContextLengthExceeded,
    ErrorDetail,
    ErrorResponse,
    InvalidRequest,
    ServiceError,
)
from app.inference.engine import (
    ChatMessage,
    Engine,
    Finished,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from app.inference.grammars import json_object_grammar, json_schema_grammar
from app.inference.host import Lease, ModelHost
from app.openai.protocol import (
    MAX_CHOICES_PER_REQUEST,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    DetokenizeRequest,
    DetokenizeResponse,
    JsonObjectFormat,
    JsonSchemaFormat,
    Model,
    ModelList,
    SamplingDefaults,
    TokenizeRequest,
    TokenizeResponse,
    TokenLogprobView,
    TopLogprobView,
    Usage,
    new_id,
    now,
)
from app.system.logs import current_request, note_error
from app.system.metrics import Metrics

logger = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"


@dataclass
class _Job:
    """Validated, tokenized work: ``n`` generations for each prompt, on a leased model."""

    lease: Lease
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    metrics: Metrics | None = None
    usage: UsageLimits | None = None

    @property
    def engine(self) -> Engine:
        return self.lease.engine

    @property
    def model(self) -> str:
        """The model's id (a request may have named it by an alias)."""
        return self.lease.model_id

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def start(self) -> AsyncGenerator[tuple[int, GenerationEvent]]:
        """Every choice's events, tagged with the choice index, as they come; the model's lease
        ends with them."""
        log = current_request()
        owner = log.account.id if log is not None and log.account is not None else None
        runs = [
            self.engine.generate(tokens, _choice_params(self.params, j), owner=owner)
            for tokens in self.prompts
            for j in range(self.n)
        ]
        # One choice (the usual case) needs no merging task: one hop less per token.
        return _observed(self, _single(runs[0]) if len(runs) == 1 else _merge(runs))


@dataclass
class _Choice:
    """A finished choice, collected for a non-streamed answer."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: Finished | None = None

    @property
    def done(self) -> Finished:
        assert self.finished is not None
        return self.finished


class OpenAIService:
    """Completions, chat completions, models and the tokenizer, over the served model."""

    def __init__(
        self,
        host: ModelHost,
        defaults: SamplingDefaults,
        owned_by: str,
        metrics: Metrics | None = None,
        usage: UsageLimits | None = None,
    ) -> None:
        self._host = host
        self._metrics = metrics
        self._usage = usage
        self._defaults = defaults
        self._owned_by = owned_by
        self._created = now()

    # --- models and tokenizer ------------------------------------------------------------------

    def list_models(self) -> ModelList:
        """The configured models, whether or not they are loaded."""
        return ModelList(data=[self._model(spec.id) for spec in self._host.catalog.models])

    def get_model(self, name: str) -> Model:
        """One model, by id or alias; raises ``ModelNotFound``."""
        return self._model(self._host.find(name).id)

    def _model(self, model_id: str) -> Model:
        return Model(id=model_id, created=self._created, owned_by=self._owned_by)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """The tokens of ``request.content``."""
        async with self._host.lease(request.model or self._host.model_id) as lease:
            return TokenizeResponse(
                tokens=await lease.engine.tokenize(request.content, add_special=request.add_special)
            )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        """The text of ``request.tokens``."""
        async with self._host.lease(request.model or self._host.model_id) as lease:
            vocab_size = lease.engine.vocab_size
            if request.tokens and max(request.tokens) >= vocab_size:
                raise InvalidRequest(f"Token ids run from 0 to {vocab_size - 1}.", param="tokens")
            return DetokenizeResponse(content=await lease.engine.detokenize(request.tokens))

    # --- /v1/completions -----------------------------------------------------------------------

    async def _completion_job(self, request: CompletionRequest) -> _Job:
        request.check_supported()

        async def prepare(engine: Engine) -> tuple[list[list[int]], SamplingParams]:
            params = request.sampling_params(
                self._defaults, vocab_size=engine.vocab_size, logprobs=request.logprobs
            )
            prompts = list(await asyncio.gather(*(_encoded(engine, p) for p in request.prompts())))
            return prompts, params

        return await self._new_job(request.model, request.n or 1, prepare)

    async def _new_job(
        self,
        model: str,
        n: int,
        prepare: Callable[[Engine], Awaitable[tuple[list[list[int]], SamplingParams]]],
    ) -> _Job:
        """A job on a lease of ``model``: the lease ends with the job, or here if preparing it
        (tokenizing, checking) fails."""
        lease = await self._host.acquire(model)
        try:
            prompts, params = await prepare(lease.engine)
            return _job(lease, prompts, params, n, self._metrics, self._usage)
        except BaseException:
            lease.release()
            raise

    async def create_completion(self, request: CompletionRequest) -> CompletionResponse:
        """Completes every prompt ``n`` times."""
        job = await self._completion_job(request)
        choices = await _collect(job)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=job.model,
            choices=[
                CompletionChoice(
                    text="".join(c.parts),
                    index=i,
                    logprobs=_completion_logprobs(c.logprobs, 0)
                    if request.logprobs is not None
                    else None,
                    finish_reason=c.done.reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=_usage(job, choices),
        )

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[bytes]:
        """Server-sent events of ``text_completion`` chunks, then ``[DONE]``."""
        job = await self._completion_job(request)
        events = await _started(job)
        response_id, created = new_id("cmpl"), now()
        offsets = [0] * job.choices

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return _sse(
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
                logprobs = _completion_logprobs(list(event.logprobs), offsets[index])
            offsets[index] += len(event.text)
            return chunk(
                [
                    CompletionChoice(
                        text=event.text, index=index, logprobs=logprobs, finish_reason=None
                    )
                ]
            )

        return _stream(job, events, on_event, lambda usage: chunk([], usage), request.include_usage)

    # --- /v1/chat/completions ------------------------------------------------------------------

    async def _chat_job(self, request: ChatCompletionRequest) -> _Job:
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

        return await self._new_job(request.model, request.n or 1, prepare)

    async def create_chat_completion(self, request: ChatCompletionRequest) -> ChatCompletion:
        """Replies to the conversation ``n`` times."""
        job = await self._chat_job(request)
        choices = await _collect(job)
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=job.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content="".join(c.parts)),
                    logprobs=_chat_logprobs(c.logprobs) if request.logprobs else None,
                    finish_reason=c.done.reason,
                )
                for i, c in enumerate(choices)
            ],
            usage=_usage(job, choices),
        )

    async def stream_chat_completion(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """Server-sent events of ``chat.completion.chunk``s, then ``[DONE]``."""
        job = await self._chat_job(request)
        events = await _started(job)
        response_id, created = new_id("chatcmpl"), now()

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
            return _sse(
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
            logprobs = _chat_logprobs(list(event.logprobs)) if request.logprobs else None
            return chunk(
                [ChunkChoice(index=index, delta=Delta(content=event.text), logprobs=logprobs)]
            )

        roles = chunk(
            [
                ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
                for i in range(job.choices)
            ]
        )
        return _stream(
            job, events, on_event, lambda usage: chunk([], usage), request.include_usage, roles
        )


async def _encoded(engine: Engine, prompt: str | list[int]) -> list[int]:
    """A prompt's tokens: a text tokenized, or token ids checked against the vocabulary."""
    if isinstance(prompt, str):
        return await engine.tokenize(prompt)
    if any(not 0 <= token < engine.vocab_size for token in prompt):
        raise InvalidRequest(f"Token ids run from 0 to {engine.vocab_size - 1}.", param="prompt")
    return prompt


def _job(
    lease: Lease,
    prompts: list[list[int]],
    params: SamplingParams,
    n: int,
    metrics: Metrics | None,
    usage: UsageLimits | None,
) -> _Job:
    """Checks what can be checked before generating anything."""
    engine = lease.engine
    for tokens in prompts:
        if not tokens:
            raise InvalidRequest("The prompt is empty.", param="prompt")
        if len(tokens) >= engine.context_size:
            raise ContextLengthExceeded(prompt_tokens=len(tokens), context_size=engine.context_size)
    if n * len(prompts) > MAX_CHOICES_PER_REQUEST:
        raise InvalidRequest(
            f"At most {MAX_CHOICES_PER_REQUEST} choices per request; {len(prompts)} prompts "
            f"times n={n} is more.",
            param="n",
        )
    return _Job(lease, prompts, params, n, metrics, usage)


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """With a seed and ``n`` > 1, each choice gets its own (still repeatable) seed."""
    if index == 0 or params.seed is None:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


async def _observed(
    job: _Job, events: AsyncGenerator[tuple[int, GenerationEvent]]
) -> AsyncGenerator[tuple[int, GenerationEvent]]:
    """Passes a job's events on; when they end, releases its model and records what happened
    (the request's access line, the metrics)."""
    log = current_request()
    started = log.started if log is not None else time.perf_counter()
    first_token: float | None = None
    generated = [0] * job.choices  # per choice: what it has cost so far, finished or not
    outcome = "cancelled"  # unless the events run to their end or fail
    if job.metrics is not None:
        job.metrics.requests_processing.inc()
    try:
        async for index, event in events:
            if isinstance(event, TextDelta):
                if first_token is None:
                    first_token = time.perf_counter()
                generated[index] = max(generated[index], event.generated)
            else:
                generated[index] = event.completion_tokens
                if outcome == "cancelled":
                    outcome = event.reason
            yield index, event
    except ServiceError as exc:
        outcome = exc.code or exc.error_type
        raise
    except Exception:
        outcome = "server_error"
        raise
    finally:
        try:
            await events.aclose()
        finally:  # the bookkeeping happens however the events ended
            job.lease.release()
            completion_tokens = sum(generated)
            if log is not None:
                log.model, log.first_token = job.model, first_token
                log.prompt_tokens, log.completion_tokens = job.prompt_tokens, completion_tokens
            if job.metrics is not None:
                job.metrics.requests_processing.dec()
                job.metrics.generation(
                    job.model,
                    job.prompt_tokens,
                    completion_tokens,
                    ttft=None if first_token is None else first_token - started,
                    duration=time.perf_counter() - started,
                    outcome=outcome,
                )
            if log is not None and log.account is not None and job.usage is not None:
                # Last, and shielded: a request cancelled (the client left) still has its use
                # written, and a cancellation here cannot skip the bookkeeping above.
                await asyncio.shield(
                    job.usage.record(log.account.id, job.prompt_tokens, completion_tokens)
                )


async def _single(
    run: AsyncIterator[GenerationEvent],
) -> AsyncGenerator[tuple[int, GenerationEvent]]:
    try:
        async for event in run:
            yield 0, event
    finally:
        await run.aclose()  # type: ignore[attr-defined]


async def _merge(
    runs: list[AsyncIterator[GenerationEvent]],
) -> AsyncGenerator[tuple[int, GenerationEvent]]:
    """Interleaves several generations; closing this cancels those still running."""
    queue: asyncio.Queue[tuple[int, GenerationEvent | Exception]] = asyncio.Queue()

    async def pump(index: int, run: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for event in run:
                queue.put_nowait((index, event))
        except Exception as exc:
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
    try:
        running = len(runs)
        while running:
            index, event = await queue.get()
            if isinstance(event, Exception):
                raise event
            yield index, event
            if isinstance(event, Finished):
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _collect(job: _Job) -> list[_Choice]:
    choices = [_Choice() for _ in range(job.choices)]
    async for index, event in job.start():
        if isinstance(event, TextDelta):
            choices[index].parts.append(event.text)
            choices[index].logprobs.extend(event.logprobs)
        else:
            choices[index].finished = event
    return choices


async def _started(job: _Job) -> AsyncGenerator[tuple[int, GenerationEvent]]:
    """Starts the generations and waits for their first event, so that an error raised before
    anything was generated (a grammar llama.cpp rejects) is still an ordinary HTTP error."""
    events = job.start()
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise

    async def resumed() -> AsyncGenerator[tuple[int, GenerationEvent]]:
        try:
            yield first
            async for item in events:
                yield item
        finally:
            await events.aclose()

    return resumed()


async def _stream(
    job: _Job,
    events: AsyncGenerator[tuple[int, GenerationEvent]],
    on_event: Callable[[int, GenerationEvent], bytes],
    usage_chunk: Callable[[Usage], bytes],
    include_usage: bool,
    opening: bytes | None = None,
) -> AsyncIterator[bytes]:
    completion_tokens = 0
    try:
        if opening is not None:
            yield opening
        async for index, event in events:
            if isinstance(event, Finished):
                completion_tokens += event.completion_tokens
            yield on_event(index, event)
        if include_usage:
            yield usage_chunk(Usage.of(job.prompt_tokens, completion_tokens))
        yield _DONE
    except ServiceError as exc:
        note_error(exc.code or exc.error_type)
        yield _sse(ErrorResponse(ErrorDetail(exc.message, exc.error_type, exc.param, exc.code)))
    except Exception:
        logger.exception("a stream failed after it began")
        note_error("server_error")
        yield _sse(
            ErrorResponse(
                ErrorDetail(
                    "The server had an error while generating the response.", "server_error"
                )
            )
        )
    finally:
        await events.aclose()


def _sse(payload: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def _usage(job: _Job, choices: list[_Choice]) -> Usage:
    return Usage.of(job.prompt_tokens, sum(c.done.completion_tokens for c in choices))


def _chat_logprobs(tokens: list[TokenLogprob]) -> ChoiceLogprobs:
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


def _completion_logprobs(tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs:
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
