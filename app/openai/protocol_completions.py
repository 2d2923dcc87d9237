"""``/v1/completions``'s request and response, in OpenAI's field names and order."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.errors import InvalidRequest
from app.inference.engine import FinishReason
from app.openai.protocol import MAX_PROMPTS, MAX_TOP_LOGPROBS, Sampling, Usage


class CompletionRequest(Sampling, kw_only=True):
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


class CompletionResponse(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/completions``; also each chunk of its stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | UnsetType | None = UNSET
