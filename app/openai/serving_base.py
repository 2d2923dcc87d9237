"""What the generation endpoints share: a job on a leased model, held for its caller, run to its
end, and accounted for (usage, metrics, the access line).

Everything that can be refused is checked before the first token is generated (and, when
streaming, before the first byte is sent), so such errors are ordinary HTTP errors. What fails
after a stream began is sent as an ``error`` event, which the ``openai`` SDK raises as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from app.accounts.limits import Caller, Limits
from app.accounts.usage import UsageLedger
from app.error_responses import ErrorDetail, ErrorResponse
from app.errors import ContextLengthExceeded, InvalidRequest, ServiceError
from app.inference.engine import (
    Engine,
    Finished,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from app.inference.host import Lease, ModelHost
from app.openai.protocol import MAX_CHOICES_PER_REQUEST, SamplingDefaults, Usage
from app.system.access import note_error, note_generation, request_started
from app.system.metrics import Metrics

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"

Prepare = Callable[[Engine], Awaitable[tuple[list[list[int]], SamplingParams]]]


@dataclass
class Job:
    """Validated, tokenized work for one caller: ``n`` generations for each prompt, on a leased
    model. ``held`` keeps the lease and the caller's slot until the job's events end."""

    caller: Caller
    lease: Lease
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    held: AsyncExitStack
    ledger: UsageLedger
    metrics: Metrics | None = None

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
        """Every choice's events, tagged with the choice index, as they come; the lease and the
        slot end with them."""
        owner = self.caller.user.id  # whose turn a free slot is
        runs = [
            self.engine.generate(tokens, _choice_params(self.params, j), owner=owner)
            for tokens in self.prompts
            for j in range(self.n)
        ]
        # One choice (the usual case) needs no merging task: one hop less per token.
        return _observed(self, _single(runs[0]) if len(runs) == 1 else _merge(runs))


@dataclass
class Choice:
    """A finished choice, collected for a non-streamed answer."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finished: Finished | None = None

    @property
    def done(self) -> Finished:
        assert self.finished is not None
        return self.finished

    @property
    def text(self) -> str:
        return "".join(self.parts)


class OpenAIServing:
    """The generation endpoints' common machinery."""

    def __init__(
        self,
        host: ModelHost,
        defaults: SamplingDefaults,
        *,
        limits: Limits,
        ledger: UsageLedger,
        metrics: Metrics | None = None,
    ) -> None:
        self._host = host
        self._defaults = defaults
        self._limits = limits
        self._ledger = ledger
        self._metrics = metrics

    async def _new_job(self, caller: Caller, model: str, n: int, prepare: Prepare) -> Job:
        """A job for ``caller`` on a lease of ``model``: the caller's slot and the lease are held
        until the job's events end, or given back here if preparing it (tokenizing, checking)
        fails."""
        held = AsyncExitStack()
        try:
            await held.enter_async_context(self._limits.slot(caller.user))
            lease = await self._host.acquire(model)
            held.callback(lease.release)
            prompts, params = await prepare(lease.engine)
            _check(lease.engine, prompts, n)
        except BaseException:
            await held.aclose()
            raise
        return Job(caller, lease, prompts, params, n, held, self._ledger, self._metrics)


def _check(engine: Engine, prompts: list[list[int]], n: int) -> None:
    """Refuses what can be refused before generating anything."""
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


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """With a seed and ``n`` > 1, each choice gets its own (still repeatable) seed."""
    if index == 0 or params.seed is None:
        return params
    return msgspec.structs.replace(params, seed=params.seed + index)


async def _observed(
    job: Job, events: AsyncGenerator[tuple[int, GenerationEvent]]
) -> AsyncGenerator[tuple[int, GenerationEvent]]:
    """Passes a job's events on; when they end, gives back what the job held and records what
    happened (usage, metrics, the access line)."""
    started = request_started()
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
            await job.held.aclose()
            completion_tokens = sum(generated)
            ttft = None if first_token is None else first_token - started
            note_generation(job.model, job.prompt_tokens, completion_tokens, ttft)
            if job.metrics is not None:
                job.metrics.requests_processing.dec()
                job.metrics.generation(
                    job.model,
                    job.prompt_tokens,
                    completion_tokens,
                    ttft=ttft,
                    duration=time.perf_counter() - started,
                    outcome=outcome,
                )
            # Last, and shielded: a request cancelled (the client left) still has its use
            # written, and a cancellation here cannot skip the bookkeeping above.
            await asyncio.shield(
                job.ledger.record(job.caller.user.id, job.prompt_tokens, completion_tokens)
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


async def collect(job: Job) -> list[Choice]:
    """Runs a job to its end, for a non-streamed answer."""
    choices = [Choice() for _ in range(job.choices)]
    async for index, event in job.start():
        if isinstance(event, TextDelta):
            choices[index].parts.append(event.text)
            choices[index].logprobs.extend(event.logprobs)
        else:
            choices[index].finished = event
    return choices


class Events(Protocol):
    """A job's events as they come, tagged with the choice index; closing them stops the job."""

    def __aiter__(self) -> AsyncIterator[tuple[int, GenerationEvent]]: ...

    async def __anext__(self) -> tuple[int, GenerationEvent]: ...

    async def aclose(self) -> None: ...


class Started:
    """A started job's events: the first (already received), then the rest. Unlike a generator
    that was never iterated, closing it always stops the job and gives back what it holds."""

    def __init__(
        self,
        first: tuple[int, GenerationEvent],
        events: AsyncGenerator[tuple[int, GenerationEvent]],
    ) -> None:
        self._first: tuple[int, GenerationEvent] | None = first
        self._events = events

    def __aiter__(self) -> Started:
        return self

    async def __anext__(self) -> tuple[int, GenerationEvent]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._events)

    async def aclose(self) -> None:
        self._first = None
        await self._events.aclose()


class Closing:
    """Chunks to send that, however the response ends (finished, failed, or its client gone
    before it was ever read), run ``on_close`` once: what they were made from is stopped and
    given back at once, not when the garbage collector finds it."""

    def __init__(
        self, chunks: AsyncGenerator[bytes], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        self._chunks = chunks
        self._on_close: Callable[[], Awaitable[None]] | None = on_close

    def __aiter__(self) -> Closing:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                await on_close()


async def started(job: Job) -> Started:
    """Starts the generations and waits for their first event, so that an error raised before
    anything was generated (a grammar llama.cpp rejects) is still an ordinary HTTP error."""
    events = job.start()
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return Started(first, events)


def stream(
    job: Job,
    events: Events,
    on_event: Callable[[int, GenerationEvent], bytes],
    usage_chunk: Callable[[Usage], bytes],
    include_usage: bool,
    opening: bytes | None = None,
) -> Closing:
    """The server-sent events of a started job, ``[DONE]`` last (or an error event)."""
    chunks = _chunks(job, events, on_event, usage_chunk, include_usage, opening)
    return Closing(chunks, events.aclose)


async def _chunks(
    job: Job,
    events: Events,
    on_event: Callable[[int, GenerationEvent], bytes],
    usage_chunk: Callable[[Usage], bytes],
    include_usage: bool,
    opening: bytes | None,
) -> AsyncGenerator[bytes]:
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
        yield DONE
    except ServiceError as exc:
        note_error(exc.code or exc.error_type)
        yield sse(ErrorResponse(ErrorDetail(exc.message, exc.error_type, exc.param, exc.code)))
    except Exception:
        logger.exception("a stream failed after it began")
        note_error("server_error")
        yield sse(
            ErrorResponse(
                ErrorDetail(
                    "The server had an error while generating the response.", "server_error"
                )
            )
        )
    finally:
        await events.aclose()


def sse(payload: msgspec.Struct) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def usage_of(job: Job, choices: list[Choice]) -> Usage:
    """The usage of a finished non-streamed job."""
    return Usage.of(job.prompt_tokens, sum(c.done.completion_tokens for c in choices))
