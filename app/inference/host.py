"""Owns the served model: fetches and loads it in the background, hands out its engine."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.errors import EngineStopping, ModelNotFound, ModelNotReady, ModelUnavailable
from app.inference.engine import Engine, EngineStats
from app.inference.model_files import resolve_model_file
from app.settings import Settings

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Path, Settings], Awaitable[Engine]]


class ModelState(enum.StrEnum):
    """Where the model is on its way to serving."""

    STARTING = "starting"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


async def load_llama_engine(path: Path, settings: Settings) -> Engine:
    """The default loader: llama.cpp over the GGUF at ``path``."""
    from app.inference.llama_engine import LlamaEngine  # keeps llama_cpp out of unit tests

    return await LlamaEngine.load(
        path,
        context_size=settings.context_size,
        threads=settings.threads,
        parallel=settings.parallel,
        max_queue=settings.max_queue,
        queue_timeout=settings.queue_timeout,
        fallback_chat_format=settings.chat_format_fallback,
    )


class ModelHost:
    """The model this service serves under ``settings.model_name``."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        loader: EngineLoader = load_llama_engine,
    ) -> None:
        self.model_id = settings.model_name
        self._settings = settings
        self._loader = loader
        self._engine = engine
        self.state = ModelState.READY if engine is not None else ModelState.STARTING
        self.error: str | None = None
        self.stopping = False
        self._settled = asyncio.Event()
        if engine is not None:
            self._settled.set()

    async def start(self) -> None:
        """Fetches and loads the model; on failure records the reason in ``error``."""
        if self._engine is not None:
            return
        try:
            self.state = ModelState.DOWNLOADING
            path = await asyncio.to_thread(resolve_model_file, self._settings)
            self.state = ModelState.LOADING
            logger.info("loading %s", path)
            self._engine = await self._loader(path, self._settings)
            self.state = ModelState.READY
            logger.info(
                "model %r ready (context %d tokens)", self.model_id, self._engine.context_size
            )
        except ModelUnavailable as exc:
            self.state, self.error = ModelState.FAILED, str(exc)
            logger.error("%s", exc)
        except Exception as exc:
            self.state, self.error = ModelState.FAILED, f"Loading the model failed: {exc!r}"
            logger.exception("loading the model failed")
        finally:
            self._settled.set()

    async def wait_settled(self) -> ModelState:
        """Waits until the model is ready or has failed."""
        await self._settled.wait()
        return self.state

    def check_model(self, model: str) -> None:
        """Raises ``ModelNotFound`` unless this service serves ``model``."""
        if model != self.model_id:
            raise ModelNotFound(model)

    def engine(self, model: str) -> Engine:
        """The engine for ``model``; raises if this service does not serve it or it is not ready."""
        self.check_model(model)
        if self.stopping:
            raise EngineStopping()
        if self._engine is None or self.state is not ModelState.READY:
            raise ModelNotReady(model, self.state.value)
        return self._engine

    def stats(self) -> EngineStats | None:
        """The engine's load, once it is loaded."""
        return self._engine.stats() if self._engine is not None else None

    def stop_admitting(self) -> None:
        """Shutdown has begun: health says so and new generations get a 503."""
        self.stopping = True
        if self._engine is not None:
            self._engine.stop_admitting()

    async def close(self) -> None:
        """Lets running generations finish (up to the shutdown grace), then frees the engine."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close(grace=self._settings.shutdown_grace)
