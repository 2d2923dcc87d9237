"""``/v1/chat/completions``: replies to a conversation, as one answer or as server-sent events,
with structured outputs and tool calls held to their schemas by a grammar."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from app.accounts.limits import Caller
from app.errors import InvalidRequest
from app.inference.engine import Engine, Finished, GenerationEvent, SamplingParams, TokenLogprob
from app.inference.json_grammar import json_object_grammar, json_schema_grammar
from app.inference.tool_call_reader import CallDelta, ToolCallReader
from app.inference.tool_formats import JsonAlternative
from app.openai.context_overflow import DROPPED_HEADER, older_turns, turns_to_drop, without
from app.openai.protocol import Usage, new_id, now
from app.openai.protocol_chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatFinishReason,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    JsonObjectFormat,
    JsonSchemaFormat,
    TokenLogprobView,
    TopLogprobView,
)
from app.openai.protocol_tools import (
    FunctionCall,
    FunctionCallDelta,
    ToolCallDelta,
    ToolCallView,
)
from app.openai.serving_base import (
    Job,
    OpenAIServing,
    collect,
    sse,
    started,
    stream,
    usage_of,
)
from app.openai.tools import ToolPlan, chat_messages, tool_plan
from app.openai.turn import Turn

_RESPONSE_SCHEMA = "response_format.json_schema.schema"

# Schemas become grammars on threads of their own (each conversion is bounded, at most 2 s):
# on the default pool they would hold up password hashing, which runs there.
_CONVERTING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="schema-grammar")


logger = logging.getLogger(__name__)


class ChatServing(OpenAIServing):
    """Replies to the conversation ``n`` times."""

    def __init__(self, *args: Any, drop_oldest: bool = False, **kwargs: Any) -> None:
        """``drop_oldest`` (``APP_CONTEXT_OVERFLOW=drop_oldest``): ``fit`` drops a long chat's
        oldest turns instead of leaving it for a 400."""
        super().__init__(*args, **kwargs)
        self.drop_oldest = drop_oldest

    async def fit(
        self, request: ChatCompletionRequest, caller: Caller, *, prefill: str | None = None
    ) -> tuple[ChatCompletionRequest, dict[str, str]]:
        """The request with its oldest turns dropped so that its prompt (continuing
        ``prefill``) and ``max_tokens`` (up to half the context) fit the model's context
        (``context_overflow`` says which), and the response headers that say how many messages
        went (logged too); unchanged, and no header, when ``drop_oldest`` is off, it fits
        already, or its current turn alone is too long (the usual 400 follows)."""
        if not self.drop_oldest:
            return request, {}
        request.check_supported()
        plan = tool_plan(request)
        tools = plan.tools if plan.calling else ()
        turns = older_turns(request.messages)
        lease = await self._host.acquire(request.model)
        try:
            engine = lease.engine
            context = engine.context_size

            async def length(dropped: int) -> int:
                """The prompt's tokens with the ``dropped`` oldest turns gone (more than the
                context where the template refuses what is left)."""
                kept = chat_messages(without(request.messages, turns[:dropped]))
                try:
                    tokens = await engine.tokenize_chat(
                        kept, tools, tool_required=plan.forced, prefill=prefill
                    )
                except InvalidRequest:
                    if not dropped:
                        raise
                    return context + 1
                return len(tokens)

            answer = min(request._limit() or self._defaults.max_tokens, context // 2)
            dropping = await turns_to_drop(len(turns), length, context=context, answer=answer)
        finally:
            lease.release()
        if not dropping:
            return request, {}
        kept = without(request.messages, turns[:dropping])
        dropped = len(request.messages) - len(kept)
        logger.info(
            "dropped the %d oldest messages of %s's chat to fit the context",
            dropped,
            caller.user.username,
        )
        return msgspec.structs.replace(request, messages=kept), {DROPPED_HEADER: str(dropped)}

    async def _job(
        self, request: ChatCompletionRequest, caller: Caller, prefill: str | None = None
    ) -> tuple[Job, ToolPlan]:
        request.check_supported()
        plan = tool_plan(request)
        messages = chat_messages(request.messages)
        answer = _answer_schema(request)

        async def prepare(engine: Engine) -> tuple[list[list[int]], SamplingParams]:
            grammar, opening = None, None
            if plan.calling or answer is not None:  # a plain chat needs no thread hop
                grammar, opening = await asyncio.get_running_loop().run_in_executor(
                    _CONVERTING, _grammar, engine, plan, answer
                )
            params = request.sampling_params(
                self._defaults,
                vocab_size=engine.vocab_size,
                logprobs=request.top_logprob_count(),
                grammar=grammar,
                grammar_opening=opening,
            )
            if plan.tools and not plan.calling:
                params = await _no_native_calls(engine, params)
            tools = plan.tools if plan.calling else ()
            tokens = await engine.tokenize_chat(
                messages, tools, tool_required=plan.forced, prefill=prefill
            )
            return [tokens], params

        return await self._new_job(caller, request.model, request.n or 1, prepare), plan

    async def turn(
        self,
        request: ChatCompletionRequest,
        caller: Caller,
        *,
        wait: bool = True,
        prefill: str | None = None,
    ) -> Turn:
        """One reply (``n`` is 1) as protocol-neutral parts: what the Responses and Messages
        APIs are built on. Checked, tokenized and holding the caller's slot; with ``wait``,
        also started, so that what fails before the first token is an ordinary HTTP error.
        ``prefill``: the start of the reply, which the model continues (not in the parts)."""
        job, plan = await self._job(request, caller, prefill)
        deltas = _ChoiceStream(job, plan, logprobs=False)
        if wait:
            return Turn(job, deltas, await started(job), live=True)
        return Turn(job, deltas, job.start(), live=False)

    async def count_prompt(
        self, request: ChatCompletionRequest, caller: Caller, prefill: str | None = None
    ) -> int:
        """How many tokens the request's prompt is, as the model's template renders it."""
        request.check_supported()
        plan = tool_plan(request)
        messages = chat_messages(request.messages)
        lease = await self._host.acquire(request.model)
        try:
            tools = plan.tools if plan.calling else ()
            tokens = await lease.engine.tokenize_chat(
                messages, tools, tool_required=plan.forced, prefill=prefill
            )
        finally:
            lease.release()
        return len(tokens)

    async def create(self, request: ChatCompletionRequest, caller: Caller) -> ChatCompletion:
        """The whole answer."""
        job, plan = await self._job(request, caller)
        choices = await collect(job)
        replies = []
        for i, choice in enumerate(choices):
            message, finish = _reply(job, plan, choice.text, choice.done)
            logprobs = _logprobs(choice.logprobs) if request.logprobs else None
            replies.append(
                ChatChoice(index=i, message=message, logprobs=logprobs, finish_reason=finish)
            )
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=job.model,
            choices=replies,
            usage=usage_of(job, choices),
        )

    async def stream(self, request: ChatCompletionRequest, caller: Caller) -> AsyncIterator[bytes]:
        """Server-sent events of ``chat.completion.chunk``s, then ``[DONE]``."""
        job, plan = await self._job(request, caller)
        events = await started(job)
        response_id, created = new_id("chatcmpl"), now()
        streams = [_ChoiceStream(job, plan, bool(request.logprobs)) for _ in range(job.choices)]

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
            choice = streams[index]
            if isinstance(event, Finished):
                return b"".join(chunk([c]) for c in choice.chunks(index, choice.finish(event)))
            choice.tokens += event.logprobs
            return b"".join(chunk([c]) for c in choice.chunks(index, choice.feed(event.text)))

        # With tools the reply may be calls only, whose content OpenAI streams as null.
        opening = None if plan.calling else ""
        roles = chunk(
            [
                ChunkChoice(index=i, delta=Delta(role="assistant", content=opening))
                for i in range(job.choices)
            ]
        )
        return stream(
            job, events, on_event, lambda usage: chunk([], usage), request.include_usage, roles
        )


async def _no_native_calls(engine: Engine, params: SamplingParams) -> SamplingParams:
    """With ``tool_choice: none``, a model whose calls open with a control token of their own
    (Qwen's ``<tool_call>``, Mistral's ``[TOOL_CALLS]``) cannot write that token."""
    tool_format = engine.tool_format
    first = next((piece for piece in tool_format.opening if piece), None)
    if not tool_format.native or first is None:
        return params
    tokens = await engine.tokenize(first, add_special=False)
    if len(tokens) != 1:  # spelled with ordinary tokens: text, which stays allowed
        return params
    ban = ((tokens[0], float("-inf")),)
    return msgspec.structs.replace(params, logit_bias=params.logit_bias + ban)


def _answer_schema(request: ChatCompletionRequest) -> JsonAlternative | None:
    """The JSON a ``response_format`` asks for, as a schema."""
    if isinstance(request.response_format, JsonObjectFormat):
        return JsonAlternative({"type": "object"}, strict=False, param="response_format")
    if isinstance(request.response_format, JsonSchemaFormat):
        spec = request.response_format.json_schema
        schema = spec.schema or {"type": "object"}
        return JsonAlternative(schema, bool(spec.strict), _RESPONSE_SCHEMA)
    return None


def _grammar(
    engine: Engine, plan: ToolPlan, answer: JsonAlternative | None
) -> tuple[str | None, str | None]:
    """The grammar that holds the reply to what was asked: calls valid against their tools
    (forced, or once the model writes the opening of one: then also the opening), JSON of a
    schema, or either."""
    if plan.calling:
        tool_format = engine.tool_format
        if plan.choice == "auto" and answer is not None and tool_format.opening_in_call:
            raise InvalidRequest(
                f"This model writes its calls as bare JSON objects ({tool_format.name} format), "
                "so an answer in JSON could not be told from a call: send response_format "
                "without tools, or tool_choice 'required' or 'none'.",
                param="response_format",
            )
        free_text = plan.choice == "auto" and answer is None
        grammar, _ = tool_format.grammar(
            plan.tools,
            params=plan.params,
            only=plan.name,
            parallel=plan.parallel,
            or_json=answer if plan.choice == "auto" else None,
            after_opening=free_text,
        )
        return grammar, tool_format.opening_regex if free_text else None
    assert answer is not None  # the caller asks only when there is something to hold
    if answer.param == "response_format":
        return json_object_grammar(), None
    grammar, _ = json_schema_grammar(answer.schema, strict=answer.strict, param=answer.param)
    return grammar, None


def _finish(plan: ToolPlan, called: bool, finished: Finished) -> ChatFinishReason:
    if finished.reason == "length" or not called:
        return finished.reason
    return "function_call" if plan.legacy else "tool_calls"


def _reply(
    job: Job, plan: ToolPlan, text: str, finished: Finished
) -> tuple[AssistantMessage, ChatFinishReason]:
    """The assistant's message from the generated text: its content and its calls."""
    if not plan.calling:
        return AssistantMessage(content=text), finished.reason
    reader = ToolCallReader(job.engine.tool_format)
    reader.feed(text)
    reader.finish()
    # A call cut by max_tokens is left out: every call returned parses.
    calls = [call for call in reader.calls if call.name and call.complete]
    content: str | None = reader.content
    if calls:
        content = (content or "").strip() or None
    finish = _finish(plan, bool(calls), finished)
    if not calls:
        return AssistantMessage(content=content), finish
    if plan.legacy:
        first = FunctionCall(name=calls[0].name, arguments=calls[0].arguments)
        return AssistantMessage(content=content, function_call=first), finish
    views = [
        ToolCallView(
            id=job.engine.tool_format.call_id(),
            function=FunctionCall(name=c.name, arguments=c.arguments),
        )
        for c in calls
    ]
    return AssistantMessage(content=content, tool_calls=views), finish


class _ChoiceStream:
    """One streamed choice: its text passed on, or read for tool calls as it comes."""

    def __init__(self, job: Job, plan: ToolPlan, logprobs: bool) -> None:
        self._plan = plan
        self._logprobs = logprobs
        self.tokens: list[TokenLogprob] = []
        """Log probabilities of the tokens not yet sent (they go with the next chunk)."""
        self._format = job.engine.tool_format
        self._reader = ToolCallReader(self._format) if plan.calling else None
        self._ids: list[str] = []
        self._blank = ""  # leading whitespace held back
        self._spoke = False  # whether any content went out

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The chunks' ``delta`` (and ``finish_reason``) for newly generated ``text``."""
        if self._reader is None:
            return [{"delta": Delta(content=text)}]
        content, calls = self._reader.feed(text)
        deltas: list[dict[str, Any]] = []
        if content:
            # Blank text before the first words waits: before a call it is no content at all.
            content = self._blank + content
            self._blank = "" if content.strip() or self._spoke else content
            if content.strip() or self._spoke:
                self._spoke = True
                deltas.append({"delta": Delta(content=content)})
        deltas += [{"delta": self._call_delta(call)} for call in calls]
        return deltas

    def chunks(self, index: int, deltas: list[dict[str, Any]]) -> list[ChunkChoice]:
        """The chunks of ``deltas``, the first with the log probabilities not yet sent (a token
        that makes no delta, inside a call or half a character, sends its own with the next)."""
        chunks = [ChunkChoice(index=index, **d) for d in deltas]
        if chunks and self._logprobs:
            chunks[0].logprobs, self.tokens = _logprobs(self.tokens), []
        return chunks

    def finish(self, finished: Finished) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if self._reader is not None:
            called = any(call.name and call.complete for call in self._reader.calls)
            held = self._reader.finish()
            if not called and (self._blank + held):
                deltas.append({"delta": Delta(content=self._blank + held)})
        else:
            called = False
        deltas.append({"delta": Delta(), "finish_reason": _finish(self._plan, called, finished)})
        return deltas

    def _call_delta(self, call: CallDelta) -> Delta:
        if self._plan.legacy:
            if call.name is not None:
                return Delta(function_call=FunctionCallDelta(name=call.name, arguments=""))
            return Delta(function_call=FunctionCallDelta(arguments=call.arguments))
        if call.name is not None:
            self._ids.append(self._format.call_id())
            function = FunctionCallDelta(name=call.name, arguments="")
            view = ToolCallDelta(
                index=call.index, id=self._ids[call.index], type="function", function=function
            )
        else:
            view = ToolCallDelta(
                index=call.index, function=FunctionCallDelta(arguments=call.arguments)
            )
        return Delta(tool_calls=[view])


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
