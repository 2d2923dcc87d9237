"""OpenAI's request and response types, in OpenAI's field names and order.

Requests accept fields they do not list (OpenAI clients send extras); a field whose value would
change the result and that the service cannot honour yet is refused by ``to_sampling_params``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from app.errors import InvalidRequest
from app.inference.engine import FinishReason, SamplingParams

Temperature = Annotated[float, Meta(ge=0, le=2, description="Sampling temperature, 0 to 2.")]
TopP = Annotated[float, Meta(ge=0, le=1, description="Nucleus sampling mass, 0 to 1.")]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
StopText = Annotated[str, Meta(min_length=1, max_length=256)]

MAX_N = 16
MAX_PROMPTS = 64
# Prompts times n: each choice is one generation, and they share one engine.
MAX_CHOICES_PER_REQUEST = 64


class SamplingDefaults(msgspec.Struct, frozen=True):
    """Server-side values for what a request leaves out."""

    max_tokens: int
    temperature: float


class CompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/completions``."""

    model: Annotated[str, Meta(description="The id of a model from /v1/models.")]
    prompt: Annotated[
        str | Annotated[list[str], Meta(min_length=1, max_length=MAX_PROMPTS)],
        Meta(description="The text to complete, or a list of texts (one choice each)."),
    ]
    best_of: Annotated[int, Meta(ge=1)] | None = None
    echo: bool | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    max_tokens: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="Most tokens to generate; defaults to the server's APP_MAX_LENGTH.",
            ),
        ]
        | None
    ) = None
    n: Annotated[int, Meta(ge=1, le=MAX_N)] | None = None
    presence_penalty: Penalty | None = None
    seed: (
        Annotated[
            int,
            Meta(
                ge=-(2**63),
                le=2**63 - 1,
                description="Makes sampling repeatable: same seed and request, same text.",
            ),
        ]
        | None
    ) = None
    stop: StopText | Annotated[list[StopText], Meta(max_length=4)] | None = None
    stream: bool | None = None
    suffix: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None

    def prompts(self) -> list[str]:
        """The prompts as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def to_sampling_params(self, defaults: SamplingDefaults) -> SamplingParams:
        """Engine parameters for this request; refuses what the service cannot honour yet."""
        if self.stream:
            raise InvalidRequest("Streaming is not supported yet; omit 'stream'.", param="stream")
        if self.echo:
            raise InvalidRequest("'echo' is not supported.", param="echo")
        if self.suffix:
            raise InvalidRequest("'suffix' (insertion) is not supported.", param="suffix")
        if self.logprobs is not None:
            raise InvalidRequest("'logprobs' is not supported yet.", param="logprobs")
        if self.logit_bias:
            raise InvalidRequest("'logit_bias' is not supported yet.", param="logit_bias")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise InvalidRequest("'best_of' other than 'n' is not supported.", param="best_of")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else defaults.max_tokens,
            temperature=(
                self.temperature if self.temperature is not None else defaults.temperature
            ),
            top_p=self.top_p if self.top_p is not None else 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=self.seed,
            stop=stop,
        )


class CompletionChoice(msgspec.Struct, kw_only=True):
    """One completion."""

    text: str
    index: int
    logprobs: None = None
    finish_reason: Annotated[
        FinishReason,
        Meta(description="'length' when max_tokens (or the context) cut the text, else 'stop'."),
    ]


class Usage(msgspec.Struct, kw_only=True):
    """Token counts, as the model's tokenizer counts them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/completions``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


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


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``cmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, as OpenAI's ``created``."""
    return int(time.time())
