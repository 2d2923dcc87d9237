"""``/v1/embeddings``: inputs embedded by an embedding model, batched by its engine.

The caller's slot, the model's lease and the usage are handled as for a generation: the request
holds a slot of the caller's concurrency and a lease on the model while it embeds, and its tokens
are recorded as the caller's use (they count against the daily token limit).
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np

from app.accounts.limits import Caller, Limits
from app.accounts.usage import UsageLedger
from app.errors import InvalidRequest
from app.inference.host import ModelHost
from app.openai.protocol_embeddings import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from app.system.access import note_generation, request_started
from app.system.metrics import Metrics


class EmbeddingServing:
    """Embeds a request's inputs with the model it names."""

    def __init__(
        self,
        host: ModelHost,
        *,
        limits: Limits,
        ledger: UsageLedger,
        metrics: Metrics | None = None,
    ) -> None:
        self._host = host
        self._limits = limits
        self._ledger = ledger
        self._metrics = metrics

    async def create(self, request: EmbeddingRequest, caller: Caller) -> EmbeddingList:
        inputs = request.inputs()
        started = request_started()
        async with self._limits.slot(caller.user):
            lease = await self._host.acquire(request.model)
            try:
                embedder = lease.embedder
                if request.dimensions is not None and request.dimensions > embedder.dimensions:
                    raise InvalidRequest(
                        f"dimensions may be at most {embedder.dimensions} for this model.",
                        param="dimensions",
                    )
                tokens = [
                    await embedder.tokenize(item) if isinstance(item, str) else item
                    for item in inputs
                ]
                # The daily limit counts these tokens: one request may not overshoot it.
                await self._limits.check_tokens(caller.user, sum(len(t) for t in tokens))
                vectors = await embedder.embed(tokens)
            finally:
                lease.release()
        prompt_tokens = sum(len(t) for t in tokens)
        note_generation(lease.model_id, prompt_tokens, 0, None)
        if self._metrics is not None:
            self._metrics.embedding(lease.model_id, prompt_tokens, time.perf_counter() - started)
        # Shielded: a client that leaves now has still had its inputs embedded.
        await asyncio.shield(
            self._ledger.record(caller.user.id, prompt_tokens, 0, embedded=prompt_tokens)
        )
        data = [
            Embedding(index=i, embedding=_encoded(v, request.dimensions, request.encoding_format))
            for i, v in enumerate(vectors)
        ]
        return EmbeddingList(
            data=data,
            model=lease.model_id,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )


def _encoded(vector: np.ndarray, dimensions: int | None, encoding: str) -> list[float] | str:
    """The vector cut to ``dimensions`` (and normalised again), as floats or base64."""
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
    vector = vector.astype("<f4")
    if encoding == "base64":
        return base64.b64encode(vector.tobytes()).decode()
    floats: list[float] = vector.tolist()
    return floats
