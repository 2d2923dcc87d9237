"""OpenAI's request and response types, in OpenAI's field names and order.

Requests accept fields they do not list (OpenAI clients send extras). A listed field whose value
would change the result and that the service cannot honour is refused with a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.errors import InvalidRequest
from app.inference.engine import FinishReason, SamplingParams

Temperature = Annotated[float, Meta(ge=0, le=2, description="Sampling temperature, 0 to 2.")]
TopP = Annotated[float, Meta(ge=0, le=1, description="Nucleus sampling mass, 0 to 1.")]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
StopText = Annotated[str, Meta(min_length=1, max_length=256)]
Stop = StopText | Annotated[list[StopText], Meta(max_length=4)] | None
Seed = Annotated[
    int,
    Meta(
        ge=-(2**63),
        le=2**63 - 1,
        description="Makes sampling repeatable: same seed and request, same text.",
    ),
]
LogitBias = dict[str, Annotated[float, Meta(ge=-100, le=100)]]

MAX_N = 16
MAX_PROMPTS = 64
# Prompts times n: each choice is one generation, and they share one engine.
MAX_CHOICES_PER_REQUEST = 64
MAX_TOP_LOGPROBS = 20
# Messages in one chat request: far more than fits any context, and a bound on the rendering
# and tokenizing a request can cause before its length is known.
MAX_MESSAGES = 4096
# Far beyond any context window; a larger max_tokens is a mistake, not a request to clamp.
MAX_TOKENS = 1 << 24


class SamplingDefaults(msgspec.Struct, frozen=True):
    """Server-side values for what a request leaves out."""

    max_tokens: int
    temperature: float


class StreamOptions(msgspec.Struct, kw_only=True):
    """``stream_options``."""

    include_usage: bool = False


class _Sampling(msgspec.Struct, kw_only=True):
    """The fields both endpoints share, plus llama.cpp's sampling extensions."""

    model: Annotated[str, Meta(description="The id of a model from /v1/models.")]
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[
        LogitBias | None,
        Meta(description="Token id (as a string) to a bias from -100 (ban) to 100 (force)."),
    ] = None
    max_tokens: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_TOKENS,
                description="Most tokens to generate; defaults to the server's APP_MAX_LENGTH.",
            ),
        ]
        | None
    ) = None
    n: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    presence_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    # llama.cpp's extensions, as its server accepts them.
    top_k: (
        Annotated[int, Meta(ge=0, description="Keep the k most likely tokens; 0: all.")] | None
    ) = None
    min_p: (
        Annotated[float, Meta(ge=0, le=1, description="Drop tokens below p x the best.")] | None
    ) = None
    repeat_penalty: Annotated[float, Meta(gt=0, le=10)] | None = None
    ignore_eos: Annotated[
        bool, Meta(description="Keep generating past end-of-text (llama.cpp's option).")
    ] = False

    def _limit(self) -> int | None:
        return self.max_tokens

    def sampling_params(
        self,
        defaults: SamplingDefaults,
        *,
        vocab_size: int,
        logprobs: int | None = None,
        grammar: str | None = None,
    ) -> SamplingParams:
        """Engine parameters for this request."""
        limit = self._limit()
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed with stream: true.", param="stream_options"
            )
        return SamplingParams(
            max_tokens=limit if limit is not None else defaults.max_tokens,
            temperature=self.temperature if self.temperature is not None else defaults.temperature,
            top_p=self.top_p if self.top_p is not None else 1.0,
            top_k=self.top_k if self.top_k is not None else 40,
            min_p=self.min_p if self.min_p is not None else 0.05,
            repeat_penalty=self.repeat_penalty if self.repeat_penalty is not None else 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
            logit_bias=_logit_bias(self.logit_bias, vocab_size),
            grammar=grammar,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _logit_bias(bias: LogitBias | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    pairs = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab_size:
            raise InvalidRequest(
                f"logit_bias key {key!r} is not a token id of this model (0 to {vocab_size - 1}).",
                param="logit_bias",
            )
        pairs.append((token, value))
    return tuple(pairs)


# --- /v1/completions ---------------------------------------------------------------------------


class CompletionRequest(_Sampling, kw_only=True):
    """``POST /v1/completions``."""

    prompt: Annotated[
        str | Annotated[list[str | int | list[int]], Meta(min_length=1)],
        Meta(
            description="The text to complete, a list of texts (one choice each), a list of "
            "token ids, or a list of lists of token ids."
        ),
    ]
    best_of: Annotated[int, Meta(ge=1)] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: texts, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            return [[int(item) for item in prompt]]  # type: ignore[arg-type]
        if not (
            all(isinstance(item, str) for item in prompt)
            or all(isinstance(item, list) for item in prompt)
        ):
            raise InvalidRequest(
                "'prompt' must be a string, a list of strings, a list of token ids, or a list "
                "of lists of token ids; this one mixes them.",
                param="prompt",
            )
        if len(prompt) > MAX_PROMPTS:
            raise InvalidRequest(
                f"At most {MAX_PROMPTS} prompts per request; this one has {len(prompt)}.",
                param="prompt",
            )
        return [item for item in prompt if not isinstance(item, int)]

    def check_supported(self) -> None:
        """Refuses what would change the result but is not supported."""
        if self.echo:
            raise InvalidRequest("'echo' is not supported.", param="echo")
        if self.suffix:
            raise InvalidRequest("'suffix' (insertion) is not supported.", param="suffix")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidRequest("'best_of' other than 'n' is not supported.", param="best_of")


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    """The legacy completions log-probability format."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    """One completion."""

    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Annotated[
        FinishReason | None,
        Meta(description="'length' when max_tokens (or the context) cut the text, else 'stop'."),
    ]


class Usage(msgspec.Struct, kw_only=True):
    """Token counts, as the model's tokenizer counts them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Usage with its total."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionResponse(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/completions``; also each chunk of its stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | UnsetType | None = UNSET


# --- /v1/chat/completions ----------------------------------------------------------------------


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    """A text part of a message's content (the only kind this service reads)."""

    text: str


class Message(msgspec.Struct, kw_only=True):
    """One turn of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class TextFormat(msgspec.Struct, tag="text", tag_field="type"):
    """Free text (the default)."""


class JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type"):
    """Any valid JSON object."""


class JsonSchemaSpec(msgspec.Struct, kw_only=True):
    """``response_format.json_schema``."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    """JSON matching a schema."""

    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class ChatCompletionRequest(_Sampling, kw_only=True):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_completion_tokens: (
        Annotated[
            int,
            Meta(
                ge=1, le=MAX_TOKENS, description="Most tokens to generate (wins over max_tokens)."
            ),
        ]
        | None
    ) = None
    response_format: Annotated[
        ResponseFormat | None,
        Meta(description="`json_object` or `json_schema`: output enforced with a grammar."),
    ] = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    web_search_options: dict[str, Any] | None = None

    def _limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def check_supported(self) -> None:
        """Refuses what would change the result but is not supported."""
        if self.tools or self.functions:
            field = "tools" if self.tools else "functions"
            raise InvalidRequest("Tool and function calling are not supported.", param=field)
        if self.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("Tool calling is not supported.", param="tool_choice")
        if self.web_search_options is not None:
            raise InvalidRequest("Web search is not supported.", param="web_search_options")
        if self.audio is not None or (self.modalities and set(self.modalities) != {"text"}):
            raise InvalidRequest("Only text output is supported.", param="modalities")
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true.", param="top_logprobs")

    def top_logprob_count(self) -> int | None:
        """None without logprobs, else how many alternatives each token lists."""
        return (self.top_logprobs or 0) if self.logprobs else None


class TopLogprobView(msgspec.Struct, kw_only=True):
    """A candidate token."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobView(msgspec.Struct, kw_only=True):
    """A generated token with its log probability and the likeliest alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobView]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    """``choices[].logprobs`` of a chat completion."""

    content: list[TokenLogprobView] | None


class AssistantMessage(msgspec.Struct, kw_only=True):
    """The model's reply."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    """One reply."""

    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/chat/completions``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, kw_only=True):
    """What a stream chunk adds to a reply."""

    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    """One reply's part in a stream chunk."""

    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET


# --- models, tokenizer -------------------------------------------------------------------------


class Model(msgspec.Struct, kw_only=True):
    """A model this service serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    """The answer to ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model]


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """``POST /tokenize``, as llama.cpp's server takes it."""

    content: str
    add_special: bool = True
    model: str | None = None


class TokenizeResponse(msgspec.Struct, kw_only=True):
    """The token ids."""

    tokens: list[int]


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    """``POST /detokenize``."""

    tokens: list[Annotated[int, Meta(ge=0)]]
    model: str | None = None


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    """The text."""

    content: str


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``cmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, as OpenAI's ``created``."""
    return int(time.time())
