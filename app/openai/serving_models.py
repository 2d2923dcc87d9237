"""``/v1/models`` and llama.cpp's tokenizer routes, over the served models."""

from __future__ import annotations

from app.errors import InvalidRequest
from app.inference.host import ModelHost
from app.openai.protocol import now
from app.openai.protocol_models import (
    DetokenizeRequest,
    DetokenizeResponse,
    Model,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)


class ModelServing:
    """The configured models, and their tokenizers."""

    def __init__(self, host: ModelHost, owned_by: str) -> None:
        self._host = host
        self._owned_by = owned_by
        self._created = now()

    def list_models(self) -> ModelList:
        """The configured models, whether or not they are loaded."""
        return ModelList(data=[self._model(spec.id) for spec in self._host.catalog.models])

    def get_model(self, name: str) -> Model:
        """One model, by id or alias; raises ``ModelNotFound``."""
        return self._model(self._host.find(name).id)

    def _model(self, model_id: str) -> Model:
        return Model(
            id=model_id,
            created=self._created,
            owned_by=self._owned_by,
            kind=self._host.models[model_id].kind,
        )

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """The tokens of ``request.content``."""
        async with self._host.lease(request.model or self._host.model_id) as lease:
            tokens = await lease.engine.tokenize(request.content, add_special=request.add_special)
            return TokenizeResponse(tokens=tokens)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        """The text of ``request.tokens``."""
        async with self._host.lease(request.model or self._host.model_id) as lease:
            vocab_size = lease.engine.vocab_size
            if request.tokens and max(request.tokens) >= vocab_size:
                raise InvalidRequest(f"Token ids run from 0 to {vocab_size - 1}.", param="tokens")
            return DetokenizeResponse(content=await lease.engine.detokenize(request.tokens))
