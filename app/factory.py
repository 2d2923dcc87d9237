"""``create_app(settings)``: the only place the service is wired together.

``build_services`` makes every service once from the settings (each package gets a small config
of its own, never the whole ``Settings``); ``create_app`` hands them to Litestar's routes as
dependencies and runs each resource's lifespan, in order: the database, the first admin, the
usage ledger, the metrics listener, the models. ``python -m app serve`` runs the same lifespan
around uvicorn, so a failure at start is one sentence, not a server error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from argon2 import PasswordHasher
from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.security.jwt import OAuth2PasswordBearerAuth, Token
from sqlalchemy.exc import ArgumentError

from app import __version__
from app.accounts.auth import bearer_auth, configured_jwt_secret
from app.accounts.bootstrap import FirstAdmin
from app.accounts.controllers import (
    AdminController,
    AdminUsageController,
    AuthController,
    MeController,
)
from app.accounts.limits import Limits
from app.accounts.passwords import Passwords
from app.accounts.schemas import User
from app.accounts.service import AccountService
from app.accounts.shared import SharedState
from app.accounts.signing import SigningSecret
from app.accounts.store import AccountStore
from app.accounts.throttle import LoginThrottle
from app.accounts.usage import UsageLedger
from app.anthropic.controllers import AnthropicController
from app.anthropic.serving import MessagesServing
from app.console.controllers import console_handlers
from app.db import Database, database_url
from app.error_responses import exception_handlers
from app.inference.catalog import Catalog, ModelSpec, load_catalog
from app.inference.engine import EngineConfig, LoadedModel
from app.inference.host import EngineLoader, HostConfig, ModelHost, load_llama_engine
from app.openai.controllers import OpenAIController, ResponsesController, TokenizerController
from app.openai.protocol import SamplingDefaults
from app.openai.response_store import ResponseStore
from app.openai.serving_chat import ChatServing
from app.openai.serving_completions import CompletionServing
from app.openai.serving_embeddings import EmbeddingServing
from app.openai.serving_models import ModelServing
from app.openai.serving_responses import ResponsesServing
from app.settings import ConfigError, Settings
from app.system.access import RequestContext
from app.system.content_type import require_json_body
from app.system.disconnect import CancelOnDisconnect
from app.system.docs import RENDER_PLUGINS, SCHEMA_PATH, docs_handlers, document_streaming
from app.system.health import health
from app.system.metrics import Metrics, metrics_endpoint, metrics_listener

OWNED_BY = "llm-service"


@dataclass(frozen=True)
class Services:
    """Everything the routes use, made once per app; each is a dependency of the same name."""

    db: Database
    signing_secret: SigningSecret
    accounts: AccountService
    auth: OAuth2PasswordBearerAuth[User, Token]
    login_throttle: LoginThrottle
    shared: SharedState
    ledger: UsageLedger
    limits: Limits
    host: ModelHost
    metrics: Metrics
    chat: ChatServing
    completions: CompletionServing
    models: ModelServing
    # Not "messages": dependency names must differ from body fields, or Litestar reports a bad
    # "messages" field as a failed dependency (a 500).
    anthropic_messages: MessagesServing
    responses: ResponsesServing
    embeddings: EmbeddingServing


def database(settings: Settings) -> Database:
    """The user database: ``APP_DATABASE_URL``, or ``app.db`` in the data directory."""
    try:
        return Database(database_url(settings.database_url, Path(settings.data_dir)))
    except (ValueError, ArgumentError):
        # The value is not repeated: it may hold a password.
        raise ConfigError(
            "APP_DATABASE_URL is not a database URL this service takes: use "
            "postgresql://USER:PASSWORD@HOST[:PORT]/DB or sqlite:///PATH"
        ) from None


def account_service(settings: Settings, db: Database) -> AccountService:
    """The accounts service over ``db``, as configured."""
    hasher = PasswordHasher(
        time_cost=settings.password_hash_time_cost,
        memory_cost=settings.password_hash_memory_kib,
    )
    return AccountService(
        AccountStore(db), Passwords(hasher), registration_open=settings.registration == "open"
    )


def catalog_for(settings: Settings) -> Catalog:
    """The configured models; raises ``ConfigError`` for a bad models file."""
    single = ModelSpec(
        id=settings.model_name,
        repo=None if settings.model_path else settings.model_repo,
        file=None if settings.model_path else settings.model_file,
        revision=settings.model_revision,
        path=settings.model_path,
    )
    return load_catalog(settings.models_file, single)


def host_config(settings: Settings) -> HostConfig:
    """What the model host needs of the settings."""
    return HostConfig(
        engine=EngineConfig(
            context_size=settings.context_size,
            parallel=settings.parallel,
            threads=settings.threads,
            max_queue=settings.max_queue,
            queue_timeout=settings.queue_timeout,
            chat_format_fallback=settings.chat_format_fallback,
            kv_cache_type=settings.kv_cache_type,
            draft_tokens=settings.draft_tokens,
        ),
        max_loaded_models=settings.max_loaded_models,
        queue_timeout=settings.queue_timeout,
        shutdown_grace=settings.shutdown_grace,
        download_log_seconds=settings.download_log_seconds,
        huggingface_token=settings.huggingface_token,
    )


def build_services(
    settings: Settings,
    *,
    engine: LoadedModel | None = None,
    engine_loader: EngineLoader = load_llama_engine,
) -> Services:
    """Makes every service from ``settings``.

    Args:
        settings: The configuration; nothing is read from the environment here.
        engine: An already loaded engine to serve as the default model instead of fetching and
            loading it (tests above the engine pass a fake one).
        engine_loader: Loads an engine once its model file is at hand (default: llama.cpp).

    Raises:
        ConfigError: ``JWT_SECRET_KEY`` (or the stored secret) or the models file is unusable.
    """
    host = ModelHost(
        host_config(settings), catalog_for(settings), engine=engine, loader=engine_loader
    )
    metrics = Metrics(host.stats)
    db = database(settings)
    ledger = UsageLedger(db, on_write_failure=metrics.usage_write_failures.inc)
    shared = SharedState(settings.redis_url)
    limits = Limits(
        ledger,
        storage=shared.storage,
        shared_slots=shared.slots,
        requests_per_minute=settings.requests_per_minute,
        tokens_per_day=settings.tokens_per_day,
        concurrent=settings.concurrent_per_user,
        queue_timeout=settings.queue_timeout,
        max_waiting=settings.max_queue,
    )
    accounts = account_service(settings, db)
    signing_secret = SigningSecret(
        db,
        configured=configured_jwt_secret(settings),
        algorithm=settings.algorithm,
        data_dir=Path(settings.data_dir),
    )
    defaults = SamplingDefaults(max_tokens=settings.max_length, temperature=settings.temperature)
    chat = ChatServing(
        host,
        defaults,
        limits=limits,
        ledger=ledger,
        metrics=metrics,
        drop_oldest=settings.context_overflow == "drop_oldest",
    )
    return Services(
        db=db,
        signing_secret=signing_secret,
        accounts=accounts,
        # Litestar's own documentation router (the pages behind /docs and /redoc) is public too.
        auth=bearer_auth(
            accounts,
            signing_secret,
            algorithm=settings.algorithm,
            token_minutes=settings.access_token_expire_minutes,
            public_paths=[f"^{SCHEMA_PATH}/"],
        ),
        login_throttle=LoginThrottle(
            settings.login_max_failures, settings.login_lockout_seconds, storage=shared.storage
        ),
        shared=shared,
        ledger=ledger,
        limits=limits,
        host=host,
        metrics=metrics,
        chat=chat,
        completions=CompletionServing(
            host, defaults, limits=limits, ledger=ledger, metrics=metrics
        ),
        models=ModelServing(host, OWNED_BY),
        anthropic_messages=MessagesServing(chat),
        embeddings=EmbeddingServing(host, limits=limits, ledger=ledger, metrics=metrics),
        responses=ResponsesServing(
            chat,
            ResponseStore(
                db,
                retention_days=settings.responses_retention_days,
                on_write_failure=metrics.response_store_failures.inc,
            ),
        ),
    )


def create_app(
    settings: Settings,
    services: Services | None = None,
    *,
    engine: LoadedModel | None = None,
    engine_loader: EngineLoader = load_llama_engine,
) -> Litestar:
    """Builds the service from ``settings`` (and ``services``, made from them if not given;
    ``engine`` and ``engine_loader`` are ``build_services``'s)."""
    if services is None:
        services = build_services(settings, engine=engine, engine_loader=engine_loader)
    first_admin = FirstAdmin(
        services.accounts,
        username=settings.admin_username,
        password=settings.admin_password,
        data_dir=Path(settings.data_dir),
    )
    app = Litestar(
        route_handlers=[
            health,
            *([metrics_endpoint] if settings.metrics_listen is None else []),
            OpenAIController,
            ResponsesController,
            TokenizerController,
            AnthropicController,
            AuthController,
            MeController,
            AdminController,
            AdminUsageController,
            *docs_handlers,
            *console_handlers,
        ],
        dependencies={
            field.name: Provide(_constant(getattr(services, field.name)), sync_to_thread=False)
            for field in fields(services)
        },
        on_app_init=[services.auth.on_app_init],
        lifespan=[
            services.db.lifespan,
            services.signing_secret.lifespan,
            first_admin.lifespan,
            services.ledger.lifespan,
            services.shared.lifespan,
            metrics_listener(services.metrics, settings.metrics_listen),
            services.host.lifespan,
            # After the host: at shutdown, background responses stop before the engines drain.
            services.responses.lifespan,
        ],
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
    app.asgi_handler = RequestContext(CancelOnDisconnect(app.asgi_handler), services.metrics)
    return app


def _constant(value: object) -> Callable[[], object]:
    return lambda: value
