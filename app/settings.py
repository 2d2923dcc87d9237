"""Service settings, read once from the environment and an optional ``.env`` file.

Every field carries its environment variable name (``rename``) and a one-line description, which
is also the text ``.env.example`` shows for it; a test keeps the two in step.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from dotenv import dotenv_values
from msgspec import Meta

from app.validation import located

# Settings whose variable names predate the APP_ prefix (kept from the service this replaces).
_ENV_NAMES = {
    "jwt_secret_key": "JWT_SECRET_KEY",
    "algorithm": "ALGORITHM",
    "access_token_expire_minutes": "ACCESS_TOKEN_EXPIRE_MINUTES",
    "huggingface_token": "HUGGINGFACE_TOKEN",
    "context_size": "APP_CONTEXT_SIZE",
}
# The commit of APP_MODEL_REPO the README names: a later push to the repository cannot change what
# a fresh install downloads.
DEFAULT_MODEL_REVISION = "52e7645ba7c309695bec7ac98f4f005b139cf465"
# Account rules, shared with the accounts package so settings and API agree.
# "$(?!\n)": a plain "$" would also match before a final newline ("root\n").
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,64}$(?!\n)"
MIN_PASSWORD, MAX_PASSWORD = 8, 256

# Settings whose values must never be echoed back, not even in an error message.
_SECRETS = frozenset({"JWT_SECRET_KEY", "HUGGINGFACE_TOKEN", "APP_ADMIN_PASSWORD"})
# Other variable names that also set a field, tried in order when the main one is unset.
_ENV_FALLBACKS = {"huggingface_token": ("HF_TOKEN",)}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _ENV_NAMES.get(field, "APP_" + field.upper())


class ConfigError(Exception):
    """A setting has a value the service cannot start with; the message names the variable."""


class Settings(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename=env_name
):
    """Everything the service can be configured with."""

    host: Annotated[str, Meta(min_length=1, description="Address the HTTP server listens on.")] = (
        "127.0.0.1"
    )
    port: Annotated[int, Meta(ge=1, le=65535, description="Port the HTTP server listens on.")] = (
        8002
    )
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        Meta(description="Least severe log level written: debug, info, warning or error."),
    ] = "info"
    log_format: Annotated[
        Literal["auto", "json", "text"],
        Meta(description="Log lines as json or text; auto: text on a terminal, json elsewhere."),
    ] = "auto"
    metrics_listen: Annotated[
        Annotated[str, Meta(pattern=r"^[^\s]*:\d{1,5}$(?!\n)")] | None,
        Meta(
            description="host:port for an open /metrics listener; empty: /metrics on the main "
            "port, for admins only."
        ),
    ] = None

    model_name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=256,
            description="Model id that clients send as `model` and that /v1/models lists.",
        ),
    ] = "tinyllama-1.1b"
    model_repo: Annotated[
        str,
        Meta(
            pattern=r"^[\w.-]+/[\w.-]+$(?!\n)",
            description="Hugging Face Hub repository the GGUF file is downloaded from.",
        ),
    ] = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
    model_file: Annotated[
        str,
        Meta(
            pattern=r"(?i)\.gguf$(?!\n)",
            description="GGUF file name inside APP_MODEL_REPO.",
        ),
    ] = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    model_revision: Annotated[
        str,
        Meta(
            min_length=1,
            description="Branch, tag or commit of APP_MODEL_REPO; pinned to a commit by default.",
        ),
    ] = DEFAULT_MODEL_REVISION
    model_path: Annotated[
        str | None,
        Meta(description="Local GGUF file to serve instead of downloading from the Hub."),
    ] = None
    models_file: Annotated[
        str | None,
        Meta(
            description="TOML file listing several models to serve; replaces the APP_MODEL_* "
            "settings above."
        ),
    ] = None
    max_loaded_models: Annotated[
        int,
        Meta(
            ge=1,
            le=64,
            description="Models kept in memory at once; the least recently used is unloaded.",
        ),
    ] = 1
    download_log_seconds: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="Seconds between download progress lines when stderr is not a terminal.",
        ),
    ] = 5.0
    huggingface_token: Annotated[
        str | None,
        Meta(description="Hub access token for gated or private repositories (or set HF_TOKEN)."),
    ] = None

    context_size: Annotated[
        int,
        Meta(ge=16, le=1_048_576, description="Context window in tokens: prompt plus completion."),
    ] = 2048
    threads: Annotated[
        Annotated[int, Meta(ge=1, le=1024)] | None,
        Meta(description="CPU threads for generation; empty means all cores."),
    ] = None
    parallel: Annotated[
        int,
        Meta(
            ge=1,
            le=64,
            description="Sequences generated at once (slots), each a full context.",
        ),
    ] = 4
    context_overflow: Annotated[
        Literal["error", "drop_oldest"],
        Meta(
            description=(
                "A chat (chat completions, responses, messages) longer than the context: error "
                "(400), or drop_oldest (its "
                "oldest turns go, never the system prompt; header x-context-dropped-messages)."
            )
        ),
    ] = "error"
    kv_cache_type: Annotated[
        Literal["f16", "q8_0", "q4_0"],
        Meta(
            description=(
                "KV cache type: f16, or q8_0 (about half the memory per slot) or q4_0 (about "
                "28%), with flash attention."
            )
        ),
    ] = "f16"
    draft_tokens: Annotated[
        int,
        Meta(
            ge=0,
            le=64,
            description=(
                "Prompt lookup: the longest draft of tokens a sequence takes from its own "
                "prompt and output, checked by the model in one batch; 0 turns it off."
            ),
        ),
    ] = 8
    max_queue: Annotated[
        int,
        Meta(ge=0, le=10_000, description="Requests that may wait for a slot; beyond that, 429."),
    ] = 16
    queue_timeout: Annotated[
        float,
        Meta(gt=0, le=3600, description="Seconds a request may wait for a slot before a 429."),
    ] = 60.0
    shutdown_grace: Annotated[
        float,
        Meta(ge=0, le=3600, description="Seconds running generations may finish after SIGTERM."),
    ] = 30.0
    chat_format_fallback: Annotated[
        Literal["zephyr", "chatml"],
        Meta(description="Chat format for a GGUF without a chat template: zephyr or chatml."),
    ] = "zephyr"
    header_timeout: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="Seconds a client may take to send its request headers before the "
            "connection is closed.",
        ),
    ] = 10.0
    max_connections: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Open connections at most; more are closed as they arrive.",
        ),
    ] = 1000
    max_request_bytes: Annotated[
        int,
        Meta(ge=1024, description="Largest request body accepted, in bytes; larger is a 413."),
    ] = 4 * 1024 * 1024
    max_length: Annotated[
        int,
        Meta(ge=1, description="Default max_tokens when a request does not set it."),
    ] = 256
    temperature: Annotated[
        float,
        Meta(
            ge=0, le=2, description="Default sampling temperature when a request does not set it."
        ),
    ] = 0.7

    data_dir: Annotated[
        str,
        Meta(
            min_length=1,
            description=(
                "Directory for the SQLite user database (unless APP_DATABASE_URL says otherwise)."
            ),
        ),
    ] = "./data"
    registration: Annotated[
        Literal["open", "closed"],
        Meta(description="open: anyone may POST /register; closed: only admins create users."),
    ] = "open"
    admin_username: Annotated[
        str,
        Meta(
            pattern=USERNAME_PATTERN,
            description="Admin account created on first start when no admin exists.",
        ),
    ] = "admin"
    admin_password: Annotated[
        Annotated[str, Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)] | None,
        Meta(description="Password for APP_ADMIN_USERNAME; empty: generated into APP_DATA_DIR."),
    ] = None
    password_hash_memory_kib: Annotated[
        int,
        Meta(
            ge=8,
            le=4_194_304,
            description="argon2id memory per password hash, KiB; stored hashes upgrade on login.",
        ),
    ] = 65_536
    password_hash_time_cost: Annotated[
        int,
        Meta(ge=1, le=100, description="argon2id passes per password hash."),
    ] = 3
    requests_per_minute: Annotated[
        int,
        Meta(
            ge=0,
            le=1_000_000_000,
            description="Requests per minute each user may send to /v1; 0: no limit.",
        ),
    ] = 60
    tokens_per_day: Annotated[
        int,
        Meta(
            ge=0,
            le=1_000_000_000,
            description="Tokens each user may have generated per UTC day; 0: no limit.",
        ),
    ] = 100_000
    concurrent_per_user: Annotated[
        int,
        Meta(
            ge=0,
            le=10_000,
            description="Requests each user may have in progress at once; 0: no limit.",
        ),
    ] = 4
    database_url: Annotated[
        Annotated[str, Meta(pattern=r"^(sqlite|postgresql|postgres)(\+[a-z0-9]+)?://")] | None,
        Meta(
            description=(
                "Where users, keys, usage and stored responses live: sqlite:///PATH or "
                "postgresql://USER:PASSWORD@HOST/DB (unset: app.db in the data directory)."
            ),
        ),
    ] = None
    redis_url: Annotated[
        Annotated[str, Meta(pattern=r"^(redis|rediss|valkey|valkeys)://")] | None,
        Meta(
            description="Valkey/Redis shared by replicas for the limits (unset: memory).",
        ),
    ] = None
    responses_retention_days: Annotated[
        int,
        Meta(
            ge=1,
            le=36_500,
            description="Days a stored /v1/responses response is kept (for GET and chaining).",
        ),
    ] = 30
    login_max_failures: Annotated[
        int,
        Meta(ge=1, description="Failed logins per username or client address before a pause."),
    ] = 5
    login_lockout_seconds: Annotated[
        int,
        Meta(
            ge=1, le=86_400, description="Seconds that failures are remembered and a pause lasts."
        ),
    ] = 300

    jwt_secret_key: Annotated[
        Annotated[str, Meta(min_length=32)] | None,
        Meta(
            description="Secret that signs access tokens (32+ bytes, 64 for HS512); empty means "
            "generate one and keep it in the database, shared by every replica."
        ),
    ] = None
    algorithm: Annotated[
        Literal["HS256", "HS384", "HS512"],
        Meta(description="JWT signing algorithm: HS256, HS384 or HS512."),
    ] = "HS256"
    access_token_expire_minutes: Annotated[
        int,
        Meta(ge=1, le=525_600, description="Minutes an access token stays valid."),
    ] = 30

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Reads settings from ``environ`` (default: the process environment) over ``env_file``.

        Empty values count as unset. Raises ``ConfigError`` naming the first bad variable.
        """
        values: dict[str, str | None] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update(dotenv_values(env_file))
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | None]) -> Settings:
        """Builds settings from variable names to string values; unknown names are ignored."""
        raw: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            for name in (field.encode_name, *_ENV_FALLBACKS.get(field.name, ())):
                value = (values.get(name) or "").strip()
                if value:
                    raw[field.encode_name] = value
                    break
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_describe(exc, raw)) from None


def _describe(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    """Turns msgspec's ``Expected ... - at `$.NAME``` into a sentence that names the variable."""
    name, detail = located(str(exc))
    if name is None:
        return f"invalid configuration: {detail}"
    choices = _choices(name)
    if choices:
        detail = "must be one of " + ", ".join(choices)
    value = "(hidden)" if name in _SECRETS else repr(raw.get(name))
    return f"invalid value {value} for {name}: {detail}"


def _choices(name: str) -> list[str]:
    return [str(c) for c in _schema().get(name, {}).get("enum", [])]


@functools.cache
def _schema() -> dict[str, Any]:
    """The JSON schema of each setting, by variable name."""
    schema: dict[str, Any] = msgspec.json.schema(Settings)["$defs"]["Settings"]["properties"]
    return schema


def describe_settings() -> list[tuple[str, str, Any]]:
    """(variable, description, default) for every setting, in declaration order."""
    return [
        (field.encode_name, _schema()[field.encode_name].get("description", ""), field.default)
        for field in msgspec.structs.fields(Settings)
    ]
