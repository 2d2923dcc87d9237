"""``/v1/embeddings``: the request and the list of embeddings, in OpenAI's field names and order."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from app.errors import InvalidRequest

MAX_INPUTS = 2048
"""Inputs in one request at most (OpenAI's limit)."""


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/embeddings``."""

    model: Annotated[str, Meta(description="The id of an embedding model from /v1/models.")]
    input: Annotated[
        str | Annotated[list[Any], Meta(max_length=MAX_INPUTS)],
        Meta(
            description="A string, a list of strings, a list of token ids, or a list of such "
            "lists (at most 2048 inputs, each within the model's context)."
        ),
    ]
    encoding_format: Annotated[
        Literal["float", "base64"],
        Meta(description="`base64`: little-endian float32 bytes, as OpenAI sends them."),
    ] = "float"
    dimensions: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        Meta(
            description="Keep the first n dimensions and normalise again (meaningful for "
            "models trained for it); at most the model's size.",
        ),
    ] = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as texts or as token id lists; a 400 naming the bad one."""
        value = self.input
        if isinstance(value, str):
            value = [value]
        if not value:
            raise InvalidRequest("input is empty: send at least one text.", param="input")
        if all(isinstance(item, str) for item in value):
            for index, text in enumerate(value):
                if not text:
                    raise InvalidRequest("An input is an empty string.", param=f"input[{index}]")
            return list(value)
        if all(_is_id(item) for item in value):
            return [list(value)]
        if all(isinstance(item, list) for item in value):
            for index, ids in enumerate(value):
                if not ids:
                    raise InvalidRequest("An input is an empty list.", param=f"input[{index}]")
                if not all(_is_id(t) for t in ids):
                    raise InvalidRequest(
                        "A token id list may hold only non-negative integers.",
                        param=f"input[{index}]",
                    )
            return [list(ids) for ids in value]
        raise InvalidRequest(
            "input must be a string, a list of strings, a list of token ids, or a list of "
            "token id lists (not a mix).",
            param="input",
        )


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    """The answer to ``POST /v1/embeddings``: one embedding per input, in input order."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
