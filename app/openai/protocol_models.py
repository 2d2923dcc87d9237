"""``/v1/models`` and llama.cpp's tokenizer routes: their requests and responses."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class Model(msgspec.Struct, kw_only=True):
    """A model this service serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Annotated[
        Literal["chat", "embedding"] | None,
        msgspec.Meta(
            description="`chat` (chat and completions) or `embedding` (/v1/embeddings), read "
            "from the GGUF; null until its file is here."
        ),
    ] = None


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
