"""Owns the served models: fetches them, loads and unloads them, hands out their engines.

At start-up every configured model's file is fetched (so a later load needs no network) and the
default model is loaded. Another model loads on its first request; when that would exceed
``APP_MAX_LOADED_MODELS``, the least recently used model that nobody is using is unloaded first.
A request holds a ``Lease`` on its model from before tokenizing until its last token, so a model
is never unloaded under a request in flight: the load waits for one to become free instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import msgspec

from app.errors import EngineStopping, InvalidRequest, ModelNotReady, ModelUnavailable, QueueFull
from app.inference.catalog import Catalog, ModelSpec
from app.inference.engine import Embedder, Engine, EngineConfig, EngineStats, LoadedModel
from app.inference.llama_embedder import LlamaEmbedder, is_embedding_model
from app.inference.llama_engine import LlamaEngine
from app.inference.model_files import resolve_model_file
from app.inference.progress import DownloadProgress

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Path, EngineConfig], Awaitable[LoadedModel]]


class HostConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the host fetches, loads and unloads models."""

    engine: EngineConfig
    """Every model's engine settings, unless its catalogue entry overrides them."""
    max_loaded_models: int = 1
    queue_timeout: float = 60.0
    """Seconds a load may wait for a loaded model to become free."""
    shutdown_grace: float = 30.0
    download_log_seconds: float = 5.0
    huggingface_token: str | None = None


class ModelState(enum.StrEnum):
    """Where a model is on its way to serving."""

    STARTING = "starting"
    DOWNLOADING = "downloading"
    UNLOADED = "unloaded"  # the file is here; it loads on the next request
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


async def load_llama_engine(path: Path, config: EngineConfig) -> LoadedModel:
    """The default loader: llama.cpp over the GGUF at ``path``, as an embedder when the GGUF
    says it pools (an embedding model), else as a chat engine."""
    if await asyncio.to_thread(is_embedding_model, path):
        return await LlamaEmbedder.load(path, config)
    return await LlamaEngine.load(path, config)


class HostedModel:
    """One configured model: its state, its file, its engine while loaded."""

    def __init__(self, spec: ModelSpec, download_log_seconds: float) -> None:
        self.spec = spec
        self.state = ModelState.STARTING
        self.error: str | None = None
        self.path: Path | None = None
        self.engine: LoadedModel | None = None
        self.kind: Literal["chat", "embedding"] | None = None
        """``chat`` or ``embedding`` once known (from the GGUF, or once loaded)."""
        self.progress = DownloadProgress(spec.file or spec.id, log_every=download_log_seconds)
        self.leases = 0
        self.last_used = 0.0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def download_percent(self) -> float | None:
        """How far the file's download is, while it downloads."""
        return self.progress.percent if self.state is ModelState.DOWNLOADING else None


class Lease:
    """A request's hold on a loaded model; ``release()`` (idempotent) when the request is done."""

    def __init__(self, model: HostedModel, released: asyncio.Event) -> None:
        assert model.engine is not None
        self._loaded: LoadedModel = model.engine
        self.model_id = model.id
        self._model, self._released = model, released
        self._held = True
        model.leases += 1
        model.last_used = time.monotonic()

    @property
    def engine(self) -> Engine:
        """The model's chat engine; a 400 for an embedding model."""
        if self._loaded.kind == "embedding":
            raise InvalidRequest(
                f"The model '{self.model_id}' is an embedding model: it only embeds "
                "(POST /v1/embeddings).",
                param="model",
            )
        return self._loaded

    @property
    def embedder(self) -> Embedder:
        """The model's embedder; a 400 for a chat model."""
        if self._loaded.kind == "chat":
            raise InvalidRequest(
                f"The model '{self.model_id}' is a chat model and cannot embed: use an "
                "embedding model (GET /v1/models lists each model's kind).",
                param="model",
            )
        return self._loaded

    def release(self) -> None:
        if self._held:
            self._held = False
            self._model.leases -= 1
            self._released.set()  # a load waiting for a model to become free looks again


class ModelHost:
    """The models this service serves, by id and alias."""

    def __init__(
        self,
        config: HostConfig,
        catalog: Catalog,
        *,
        engine: LoadedModel | None = None,
        loader: EngineLoader = load_llama_engine,
    ) -> None:
        self.catalog = catalog
        self._config = config
        self._loader = loader
        self.models = {
            spec.id: HostedModel(spec, config.download_log_seconds) for spec in catalog.models
        }
        self.state = ModelState.STARTING
        self.error: str | None = None
        self.stopping = False
        self._settled = asyncio.Event()
        self._swap = asyncio.Lock()  # one load or unload at a time
        self._released = asyncio.Event()
        self._retired = (0, 0)  # tokens drafted and accepted by engines since unloaded
        if engine is not None:  # tests above the engine: the default model is ready
            default = self.models[catalog.default.id]
            default.engine, default.state, default.kind = engine, ModelState.READY, engine.kind
            for model in self.models.values():
                if model.engine is None:
                    model.state = ModelState.UNLOADED
            self.state = ModelState.READY
            self._settled.set()

    @property
    def model_id(self) -> str:
        """The default model's id."""
        return self.catalog.default.id

    @property
    def default(self) -> HostedModel:
        return self.models[self.catalog.default.id]

    # --- start-up ------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: the server answers (health: 503 with the state) while the models
        download and the default one loads; at the end the engines drain and close."""
        loading = asyncio.create_task(self.start(), name="load-model")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await self.close()

    async def start(self) -> None:
        """Fetches every model's file and loads the default one; a failure stops the start."""
        if self.state is ModelState.READY:
            return
        try:
            self.state = ModelState.DOWNLOADING
            for model in self.models.values():
                await self._fetch(model)
            self.state = ModelState.LOADING
            async with self._swap:
                await self._load(self.default)
            self.state = ModelState.READY
        except ModelUnavailable as exc:
            self.state, self.error = ModelState.FAILED, str(exc)
            logger.error("%s", exc)
        except Exception as exc:
            self.state, self.error = ModelState.FAILED, f"Loading the model failed: {exc!r}"
            logger.exception("loading the model failed")
        finally:
            self._settled.set()

    async def _fetch(self, model: HostedModel) -> None:
        model.state = ModelState.DOWNLOADING
        try:
            model.path = await asyncio.to_thread(
                resolve_model_file,
                model.spec,
                token=self._config.huggingface_token,
                progress=model.progress,
            )
        except ModelUnavailable as exc:
            model.state, model.error = ModelState.FAILED, str(exc)
            raise
        if self._loader is load_llama_engine:  # what /v1/models says before it loads
            model.kind = (
                "embedding" if await asyncio.to_thread(is_embedding_model, model.path) else "chat"
            )
        model.state = ModelState.UNLOADED

    async def wait_settled(self) -> ModelState:
        """Waits until the start-up has finished or failed."""
        await self._settled.wait()
        return self.state

    # --- handing out engines -------------------------------------------------------------------

    def find(self, name: str) -> HostedModel:
        """The model ``name`` names (id or alias); raises ``ModelNotFound``."""
        return self.models[self.catalog.find(name).id]

    async def acquire(self, name: str) -> Lease:
        """A lease on model ``name``, loading it first if it is not in memory.

        Raises ``ModelNotFound``, ``ModelNotReady`` (503) before the start-up has finished or
        after it failed, ``EngineStopping`` during shutdown, and ``QueueFull`` (429) when no
        loaded model could be unloaded within the queue timeout.
        """
        model = self.find(name)
        if self.stopping:
            raise EngineStopping()
        if model.state is ModelState.READY:
            return Lease(model, self._released)
        if not self._settled.is_set() or model.state is ModelState.FAILED:
            raise ModelNotReady(model.id, model.state.value, model.error)
        async with self._swap:
            if model.engine is None:  # not loaded by a request that waited here before us
                await self._make_room(model)
                try:
                    await self._load(model)
                except ModelUnavailable as exc:  # llama.cpp refused it: say so, keep serving
                    raise ModelNotReady(model.id, model.state.value, str(exc)) from None
            return Lease(model, self._released)

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Lease]:
        """``acquire`` for the length of a block."""
        lease = await self.acquire(name)
        try:
            yield lease
        finally:
            lease.release()

    async def _make_room(self, wanted: HostedModel) -> None:
        """Unloads least recently used idle models until ``wanted`` fits (lock held)."""
        deadline = time.monotonic() + self._config.queue_timeout
        while True:
            loaded = [m for m in self.models.values() if m.engine is not None]
            if len(loaded) < self._config.max_loaded_models:
                return
            idle = [m for m in loaded if m.leases == 0]
            if idle:
                await self._unload(min(idle, key=lambda m: m.last_used))
                continue
            # Every loaded model has requests in flight: wait for one to finish.
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), deadline - time.monotonic())
            except TimeoutError:
                raise QueueFull(retry_after=max(1, int(self._config.queue_timeout / 4))) from None

    async def _load(self, model: HostedModel) -> None:
        assert model.path is not None
        model.state = ModelState.LOADING
        logger.info("loading %r from %s", model.id, model.path)
        try:
            model.engine = await self._loader(
                model.path, model.spec.engine_config(self._config.engine)
            )
        except ModelUnavailable as exc:
            model.state, model.error = ModelState.UNLOADED, str(exc)
            raise
        model.state, model.error = ModelState.READY, None
        model.kind = model.engine.kind
        model.last_used = time.monotonic()
        logger.info("model %r ready (context %d tokens)", model.id, model.engine.context_size)

    async def _unload(self, model: HostedModel) -> None:
        engine, model.engine = model.engine, None
        model.state = ModelState.UNLOADED
        if engine is not None:
            logger.info("unloading %r, the least recently used model", model.id)
            last = engine.stats()
            drafted, accepted = self._retired
            self._retired = (drafted + last.drafted, accepted + last.accepted)
            await engine.close(grace=0)

    # --- state and shutdown --------------------------------------------------------------------

    def stats(self) -> EngineStats | None:
        """The load over every loaded engine, or None while none is loaded; the draft counts
        include those of engines unloaded since (they only grow)."""
        engines = [m.engine for m in self.models.values() if m.engine is not None]
        if not engines:
            return None
        each = [engine.stats() for engine in engines]
        return EngineStats(
            slots=sum(s.slots for s in each),
            busy=sum(s.busy for s in each),
            waiting=sum(s.waiting for s in each),
            drafted=self._retired[0] + sum(s.drafted for s in each),
            accepted=self._retired[1] + sum(s.accepted for s in each),
        )

    def download_percent(self) -> float | None:
        """The running download's percent, if one is running."""
        return next(
            (m.download_percent for m in self.models.values() if m.download_percent is not None),
            None,
        )

    def stop_admitting(self) -> None:
        """Shutdown has begun: health says so and new generations get a 503."""
        self.stopping = True
        for model in self.models.values():
            if model.engine is not None:
                model.engine.stop_admitting()

    async def close(self) -> None:
        """Lets running generations finish (up to the shutdown grace), then frees the engines."""
        engines = []
        for model in self.models.values():
            if model.engine is not None:
                engines.append(model.engine)
                model.engine, model.state = None, ModelState.UNLOADED
        await asyncio.gather(
            *(engine.close(grace=self._config.shutdown_grace) for engine in engines)
        )
