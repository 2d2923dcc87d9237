"""``create_app(settings)``: the only place the service is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from argon2 import PasswordHasher
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app import __version__
from app.accounts.controllers import (
    AdminController,
    AdminUsageController,
    AuthController,
    MeController,
)
from app.accounts.passwords import Passwords
from app.accounts.security import bearer_auth, resolve_jwt_secret
from app.accounts.service import AccountService
from app.accounts.store import AccountStore
from app.accounts.throttle import LoginThrottle
from app.accounts.usage import UsageLimits
from app.db import Database
from app.errors import exception_handlers, require_json_body
from app.inference.catalog import load_catalog
from app.inference.engine import Engine
from app.inference.host import EngineLoader, ModelHost, load_llama_engine
from app.openai.controllers import OpenAIController, TokenizerController
from app.openai.protocol import SamplingDefaults
from app.openai.serving import OpenAIService
from app.settings import Settings
from app.system.access import RequestContext
from app.system.disconnect import CancelOnDisconnect
from app.system.docs import RENDER_PLUGINS, SCHEMA_PATH, docs_handlers, document_streaming
from app.system.health import health
from app.system.metrics import Metrics, metrics_endpoint, serve_metrics

logger = logging.getLogger(__name__)

OWNED_BY = "llm-service"


def database_path(settings: Settings) -> Path:
    """Where the user database lives."""
    return Path(settings.data_dir) / "app.db"


def account_service(settings: Settings, db: Database) -> AccountService:
    """The accounts service over ``db``, as configured."""
    hasher = PasswordHasher(
        time_cost=settings.password_hash_time_cost,
        memory_cost=settings.password_hash_memory_kib,
    )
    return AccountService(
        AccountStore(db), Passwords(hasher), registration_open=settings.registration == "open"
    )


ADMIN_PASSWORD_FILE = "initial_admin_password"  # noqa: S105 - a file name


async def prepare_accounts(settings: Settings, accounts: AccountService) -> None:
    """Creates the first admin if there is none; a generated password goes to a private file
    in the data directory, never to the log (logs get shipped and kept)."""
    generated = await accounts.ensure_admin(settings.admin_username, settings.admin_password)
    if generated is None:
        return
    path = Path(settings.data_dir) / ADMIN_PASSWORD_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generated + "\n")
    logger.warning(
        "created the admin user %r with a generated password, written to %s (readable by this "
        "user only); log in, change it with POST /users/me/password or 'python -m app users "
        "passwd %s', then delete the file",
        settings.admin_username,
        path,
        settings.admin_username,
    )


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    engine_loader: EngineLoader = load_llama_engine,
) -> Litestar:
    """Builds the service from ``settings``.

    Args:
        settings: The configuration; nothing is read from the environment here.
        engine: An already loaded engine to serve as the default model instead of fetching and
            loading it (tests above the engine pass a fake one).
        engine_loader: Loads the engine once the model file is at hand (default: llama.cpp).

    Raises:
        ConfigError: ``JWT_SECRET_KEY`` (or the stored secret) or the models file is unusable.
    """
    host = ModelHost(settings, load_catalog(settings), engine=engine, loader=engine_loader)
    metrics = Metrics(host.stats)
    db = Database(database_path(settings))
    usage = UsageLimits(
        db,
        requests_per_minute=settings.requests_per_minute,
        tokens_per_day=settings.tokens_per_day,
        concurrent=settings.concurrent_per_user,
        on_write_failure=metrics.usage_write_failures.inc,
    )
    service = OpenAIService(
        host,
        SamplingDefaults(max_tokens=settings.max_length, temperature=settings.temperature),
        owned_by=OWNED_BY,
        metrics=metrics,
        usage=usage,
    )
    accounts = account_service(settings, db)
    # Litestar's own documentation router (the pages behind /docs and /redoc) is public too.
    auth = bearer_auth(settings, resolve_jwt_secret(settings), public_paths=[f"^{SCHEMA_PATH}/"])
    login_throttle = LoginThrottle(settings.login_max_failures, settings.login_lockout_seconds)

    @contextlib.asynccontextmanager
    async def database_lifespan(_: Litestar) -> AsyncIterator[None]:
        await db.open()
        try:
            await prepare_accounts(settings, accounts)
            yield
        finally:
            if not await usage.flush():
                logger.error("%d usage rows could not be written before shutdown", usage.held)
            await db.close()

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

    @contextlib.asynccontextmanager
    async def metrics_lifespan(_: Litestar) -> AsyncIterator[None]:
        if settings.metrics_listen is None:
            yield
            return
        stop = await asyncio.to_thread(serve_metrics, metrics, settings.metrics_listen)
        logger.info("metrics served openly on http://%s/metrics", settings.metrics_listen)
        try:
            yield
        finally:
            await asyncio.to_thread(stop)

    app = Litestar(
        route_handlers=[
            health,
            *([metrics_endpoint] if settings.metrics_listen is None else []),
            OpenAIController,
            TokenizerController,
            AuthController,
            MeController,
            AdminController,
            AdminUsageController,
            *docs_handlers,
        ],
        dependencies={
            "host": Provide(lambda: host, sync_to_thread=False),
            "service": Provide(lambda: service, sync_to_thread=False),
            "accounts": Provide(lambda: accounts, sync_to_thread=False),
            "auth": Provide(lambda: auth, sync_to_thread=False),
            "login_throttle": Provide(lambda: login_throttle, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, sync_to_thread=False),
            "usage": Provide(lambda: usage, sync_to_thread=False),
        },
        on_app_init=[auth.on_app_init],
        lifespan=[database_lifespan, metrics_lifespan, model_lifespan],
        exception_handlers=exception_handlers,
        before_request=require_json_body,
        request_max_body_size=settings.max_request_bytes,
        openapi_config=OpenAPIConfig(
            title="llm-service",
            version=__version__,
            description=(
                "A self-hosted, OpenAI-compatible text generation service on llama.cpp. Point "
                "the `openai` SDK's `base_url` at `/v1` and use an API key from "
                "`POST /users/me/api-keys` (or an access token from `POST /token`) as its key."
            ),
            path=SCHEMA_PATH,
            render_plugins=list(RENDER_PLUGINS),
        ),
        logging_config=None,
    )
    document_streaming(app.openapi_schema)
    # Outermost: request ids, access lines and HTTP metrics see every request, 404s included;
    # inside it, a request whose client left before its answer is cancelled.
    app.asgi_handler = RequestContext(CancelOnDisconnect(app.asgi_handler), metrics)
    app.state.host = host
    app.state.metrics = metrics
    app.state.usage = usage  # the rate-limit guard finds it here
    app.state.db = db
    # The auth middleware looks users up through this (Litestar's documented pattern).
    app.state.accounts = accounts
    return app
