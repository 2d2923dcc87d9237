"""The models this service serves: one from the ``APP_MODEL_*`` settings, or a TOML models file.

A models file (``APP_MODELS_FILE``) lists GGUFs, each from the Hub or a local path::

    [[models]]
    id = "tinyllama-1.1b"
    aliases = ["tinyllama"]
    repo = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
    file = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    revision = "52e7645ba7c309695bec7ac98f4f005b139cf465"

    [[models]]
    id = "my-model"
    path = "/models/my-model.gguf"   # relative paths are relative to the models file
    context_size = 4096              # optional: APP_CONTEXT_SIZE, APP_PARALLEL otherwise
    parallel = 2
    chat_template = "{% for m in messages %}..."   # optional: a Jinja template for the GGUF's

The first model is the default: it is loaded at start-up; the others load on their first request.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from app.errors import ModelNotFound
from app.inference.engine import EngineConfig
from app.settings import ConfigError
from app.validation import describe

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$(?!\n)"
ModelId = Annotated[str, Meta(pattern=MODEL_ID_PATTERN)]


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[models]]`` table of a models file."""

    id: ModelId
    aliases: tuple[ModelId, ...] = ()
    repo: Annotated[str, Meta(pattern=r"^[\w.-]+/[\w.-]+$(?!\n)")] | None = None
    file: Annotated[str, Meta(pattern=r"(?i)\.gguf$(?!\n)")] | None = None
    revision: Annotated[str, Meta(min_length=1)] = "main"
    path: Annotated[str, Meta(min_length=1)] | None = None
    context_size: Annotated[int, Meta(ge=16, le=1_048_576)] | None = None
    parallel: Annotated[int, Meta(ge=1, le=64)] | None = None
    chat_template: Annotated[str, Meta(min_length=1)] | None = None
    """A Jinja chat template to use instead of the GGUF's own."""


class ModelSpec(ModelEntry, frozen=True, kw_only=True):
    """One served model and where its GGUF comes from: a Hub ``repo`` + ``file``, or ``path``."""

    models_file: str | None = None  # where it was configured; None: the APP_MODEL_* settings

    def setting(self, key: str) -> str:
        """Where the user sets ``key`` (path, repo, file or revision), for messages."""
        if self.models_file is None:
            return f"APP_MODEL_{key.upper()}"
        return f"the {key} of model {self.id!r} in {self.models_file}"

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may use for this model."""
        return (self.id, *self.aliases)

    @property
    def hub_file(self) -> tuple[str, str]:
        """``(repo, file)`` of a model from the Hub."""
        if self.repo is None or self.file is None:
            raise ValueError(f"model {self.id!r} is a local file, not one from the Hub")
        return self.repo, self.file

    @property
    def source(self) -> str:
        """Where the file comes from, for messages."""
        if self.path is not None:
            return self.path
        return f"{self.file} from {self.repo}@{self.revision}"

    def engine_config(self, base: EngineConfig) -> EngineConfig:
        """``base`` with this model's own context size and slot count applied."""
        return msgspec.structs.replace(
            base,
            context_size=self.context_size or base.context_size,
            parallel=self.parallel or base.parallel,
            chat_template=self.chat_template or base.chat_template,
        )


class _ModelsFile(msgspec.Struct, forbid_unknown_fields=True):
    models: list[ModelEntry]


@dataclass(frozen=True)
class Catalog:
    """The configured models, the first of them the default."""

    models: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        assert self.models, "a catalog has at least one model"

    @property
    def default(self) -> ModelSpec:
        return self.models[0]

    def find(self, name: str) -> ModelSpec:
        """The model ``name`` (an id or an alias) names; raises ``ModelNotFound``."""
        for spec in self.models:
            if name in spec.names:
                return spec
        raise ModelNotFound(name)


def load_catalog(models_file: str | None, single: ModelSpec) -> Catalog:
    """The models to serve: those of ``models_file`` (``APP_MODELS_FILE``), else ``single``;
    raises ``ConfigError`` with one sentence for a bad models file."""
    if models_file is None:
        return Catalog((single,))
    where = Path(models_file).expanduser()
    try:
        raw = tomllib.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read APP_MODELS_FILE {where}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"APP_MODELS_FILE {where} is not valid TOML: {exc}") from None
    try:
        models = msgspec.convert(raw, _ModelsFile).models
    except msgspec.ValidationError as exc:
        raise ConfigError(f"APP_MODELS_FILE {where}: {describe(exc)}") from None
    if not models:
        raise ConfigError(f"APP_MODELS_FILE {where} lists no models; add a [[models]] table.")
    seen: set[str] = set()
    specs = []
    for entry in models:
        spec = ModelSpec(**msgspec.structs.asdict(entry), models_file=str(where))
        problem = f"APP_MODELS_FILE {where}, model {spec.id!r}"
        if spec.path is not None and (spec.repo is not None or spec.file is not None):
            raise ConfigError(f"{problem}: give either path, or repo and file, not both.")
        if spec.path is None and (spec.repo is None or spec.file is None):
            raise ConfigError(f"{problem}: give either path, or repo and file.")
        for name in spec.names:
            if name in seen:
                raise ConfigError(f"{problem}: the name {name!r} is used twice.")
            seen.add(name)
        if spec.path is not None:
            path = where.parent / Path(spec.path).expanduser()
            spec = msgspec.structs.replace(spec, path=str(path))
        specs.append(spec)
    return Catalog(tuple(specs))
