"""``create_app(settings)``: the only place the service is wired together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app import __version__
from app.errors import exception_handlers
from app.inference.engine import Engine
from app.inference.host import EngineLoader, ModelHost, load_llama_engine
from app.openai.controllers import OpenAIController
from app.openai.protocol import SamplingDefaults
from app.openai.serving import OpenAIService
from app.settings import Settings
from app.system.docs import RENDER_PLUGINS, SCHEMA_PATH, docs_handlers
from app.system.health import health

OWNED_BY = "llm-service"


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    engine_loader: EngineLoader = load_llama_engine,
) -> Litestar:
    """Builds the service from ``settings``.

    Args:
        settings: The configuration; nothing is read from the environment here.
        engine: An already loaded engine to serve instead of fetching and loading the model
            (tests above the engine pass a fake one).
        engine_loader: Loads the engine once the model file is at hand (default: llama.cpp).
    """
    host = ModelHost(settings, engine=engine, loader=engine_loader)
    service = OpenAIService(
        host,
        SamplingDefaults(max_tokens=settings.max_length, temperature=settings.temperature),
        owned_by=OWNED_BY,
    )

    @contextlib.asynccontextmanager
    async def model_lifespan(_: Litestar) -> AsyncIterator[None]:
        # The server answers (health: 503 with the state) while the model downloads and loads.
        loading = asyncio.create_task(host.start(), name="load-model")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await host.close()

    app = Litestar(
        route_handlers=[health, OpenAIController, *docs_handlers],
        dependencies={
            "host": Provide(lambda: host, sync_to_thread=False),
            "service": Provide(lambda: service, sync_to_thread=False),
        },
        lifespan=[model_lifespan],
        exception_handlers=exception_handlers,
        openapi_config=OpenAPIConfig(
            title="llm-service",
            version=__version__,
            description=(
                "A self-hosted, OpenAI-compatible text generation service on llama.cpp. Point "
                "the `openai` SDK's `base_url` at `/v1`."
            ),
            path=SCHEMA_PATH,
            render_plugins=list(RENDER_PLUGINS),
        ),
        logging_config=None,
    )
    app.state.host = host
    return app
