"""OpenAI's protocol types that every endpoint shares, in OpenAI's field names and order: the
sampling fields, usage, ids (``protocol_completions``, ``protocol_chat`` and ``protocol_models``
hold each endpoint's own).

Requests accept fields they do not list (OpenAI clients send extras). A listed field whose value
would change the result and that the service cannot honour is refused with a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import msgspec
from msgspec import Meta

from app.errors import InvalidRequest
from app.inference.engine import SamplingParams

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


class Sampling(msgspec.Struct, kw_only=True):
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
        grammar_opening: str | None = None,
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
            grammar_opening=grammar_opening,
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


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``cmpl-…``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, as OpenAI's ``created``."""
    return int(time.time())
