"""The models file, download progress reports, and the host's load/unload rules (fake engines)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from app.errors import ModelNotFound, ModelNotReady, ModelUnavailable, QueueFull
from app.factory import catalog_for, host_config
from app.inference.engine import Engine, EngineConfig
from app.inference.host import ModelHost, ModelState
from app.inference.progress import DownloadProgress
from app.settings import DEFAULT_MODEL_REVISION, ConfigError, Settings
from tests.unit.fakes import FakeEngine
from tests.unit.support import settings_for

# --- the models file -----------------------------------------------------------------------------


def models_file(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return settings_for(tmp_path, APP_MODELS_FILE=str(path))


def test_without_a_models_file_the_model_settings_make_one_model(tmp_path: Path) -> None:
    catalog = catalog_for(settings_for(tmp_path, APP_MODEL_NAME="tiny"))
    (spec,) = catalog.models
    assert spec.id == "tiny"
    assert spec.repo == "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
    assert spec.revision == DEFAULT_MODEL_REVISION
    assert spec.setting("file") == "APP_MODEL_FILE"


def test_a_models_file_lists_models_with_aliases_and_relative_paths(tmp_path: Path) -> None:
    settings = models_file(
        tmp_path,
        """
[[models]]
id = "tinyllama-1.1b"
aliases = ["tinyllama"]
repo = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
file = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"

[[models]]
id = "local"
path = "weights/local.gguf"
context_size = 512
""",
    )
    catalog = catalog_for(settings)
    assert [m.id for m in catalog.models] == ["tinyllama-1.1b", "local"]
    assert catalog.default.id == "tinyllama-1.1b"
    assert catalog.find("tinyllama").id == "tinyllama-1.1b"
    local = catalog.find("local")
    assert local.path == str(tmp_path / "weights" / "local.gguf")
    assert local.engine_config(host_config(settings).engine).context_size == 512
    assert local.engine_config(host_config(settings).engine).parallel == settings.parallel
    assert "models.toml" in local.setting("path")
    with pytest.raises(ModelNotFound):
        catalog.find("gpt-4")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = []", "lists no models"),
        ('[[models]]\nid = "a"\n', "model 'a': give either path, or repo and file."),
        (
            '[[models]]\nid = "a"\npath = "x.gguf"\nrepo = "o/r"\nfile = "f.gguf"\n',
            "not both",
        ),
        (
            '[[models]]\nid = "a"\npath = "x.gguf"\n[[models]]\nid = "b"\naliases = ["a"]\n'
            'path = "y.gguf"\n',
            "model 'b': the name 'a' is used twice.",
        ),
        ('[[models]]\nid = "a"\npath = "x.gguf"\ncolour = "red"\n', "models[0]"),
        ('[[models]]\nid = "a b"\npath = "x.gguf"\n', "models[0].id"),
        ('[[models]]\nid = "a"\npath = "x.gguf"\nparallel = 0\n', "models[0].parallel"),
        ("[[models]\n", "is not valid TOML"),
    ],
)
def test_a_bad_models_file_is_one_sentence_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        catalog_for(models_file(tmp_path, text))
    assert f"APP_MODELS_FILE {tmp_path / 'models.toml'}" in str(raised.value)
    assert message in str(raised.value)


def test_a_missing_models_file_is_reported(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, APP_MODELS_FILE=str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="cannot read APP_MODELS_FILE"):
        catalog_for(settings)


# --- progress ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_percent_rate_and_time_left_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = DownloadProgress("model.gguf", log_every=5, terminal=False, clock=clock)
    assert progress.percent is None
    caplog.set_level(logging.INFO, logger="app.inference.progress")
    progress.begin(total=100_000_000, initial=0)
    clock.now += 1
    progress.advance(10_000_000)  # not due yet
    clock.now += 4
    progress.advance(15_000_000)
    assert progress.percent == 25.0
    assert caplog.messages == ["downloading model.gguf: 25% of 100.0 MB, 5.0 MB/s, 00:00:15 left"]


def test_a_resumed_download_counts_only_new_bytes_in_its_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = DownloadProgress("m.gguf", log_every=1, terminal=False, clock=clock)
    caplog.set_level(logging.INFO, logger="app.inference.progress")
    progress.begin(total=100_000_000, initial=50_000_000)
    clock.now += 2
    progress.advance(10_000_000)
    assert caplog.messages == [
        "resuming the download of m.gguf at 50.0 MB",
        "downloading m.gguf: 60% of 100.0 MB, 5.0 MB/s, 00:00:08 left",
    ]


def test_on_a_terminal_the_bar_is_drawn_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = DownloadProgress("m.gguf", log_every=1, terminal=True, clock=clock)
    caplog.set_level(logging.INFO, logger="app.inference.progress")
    # Whatever huggingface_hub asks for (it passes disable by its own TTY test), we decide.
    bar = progress.bar_class()(total=1000, initial=0, unit="B", disable=True, name="hf")
    assert not bar.disable
    quiet = DownloadProgress("m.gguf", terminal=False).bar_class()(total=10, disable=False)
    assert quiet.disable
    quiet.close()
    clock.now += 5
    bar.update(400)
    bar.close()
    assert progress.percent == 40.0
    assert caplog.messages == []


# --- the host: which models are in memory ------------------------------------------------------


class Loader:
    """Loads fake engines and remembers which."""

    def __init__(self) -> None:
        self.loaded: list[FakeEngine] = []

    async def __call__(self, path: Path, config: EngineConfig) -> Engine:
        engine = FakeEngine(context_size=config.context_size)
        self.loaded.append(engine)
        return engine


async def started_host(tmp_path: Path, **env: str) -> tuple[ModelHost, Loader]:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.gguf").write_bytes(b"GGUF")
    settings = models_file(
        tmp_path,
        '[[models]]\nid = "a"\npath = "a.gguf"\n'
        '[[models]]\nid = "b"\npath = "b.gguf"\ncontext_size = 99\n'
        '[[models]]\nid = "c"\npath = "c.gguf"\n',
    )
    settings = settings_for(
        tmp_path, APP_MODELS_FILE=str(settings.models_file), APP_QUEUE_TIMEOUT="0.2", **env
    )
    loader = Loader()
    host = ModelHost(host_config(settings), catalog_for(settings), loader=loader)
    await host.start()
    assert host.state is ModelState.READY, host.error
    return host, loader


def states(host: ModelHost) -> dict[str, str]:
    return {m.id: m.state.value for m in host.models.values()}


async def test_the_default_model_loads_at_start_and_others_on_demand(tmp_path: Path) -> None:
    host, loader = await started_host(tmp_path, APP_MAX_LOADED_MODELS="2")
    assert states(host) == {"a": "ready", "b": "unloaded", "c": "unloaded"}
    lease = await host.acquire("b")
    assert lease.engine.context_size == 99  # the model's own setting
    lease.release()
    assert states(host) == {"a": "ready", "b": "ready", "c": "unloaded"}

    # A third model: the least recently used idle one goes.
    (await host.acquire("a")).release()
    (await host.acquire("c")).release()
    assert states(host) == {"a": "ready", "b": "unloaded", "c": "ready"}
    assert loader.loaded[1].closed
    await host.close()
    assert all(engine.closed for engine in loader.loaded)


async def test_a_model_in_use_is_not_unloaded_the_load_waits(tmp_path: Path) -> None:
    host, loader = await started_host(tmp_path)
    busy = await host.acquire("a")
    waiting = asyncio.create_task(host.acquire("b"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert states(host)["a"] == "ready"
    assert not loader.loaded[0].closed
    busy.release()
    lease = await waiting
    assert states(host) == {"a": "unloaded", "b": "ready", "c": "unloaded"}
    lease.release()
    lease.release()  # idempotent
    assert host.models["b"].leases == 0
    await host.close()


async def test_when_no_model_becomes_free_in_time_the_answer_is_429(tmp_path: Path) -> None:
    host, _ = await started_host(tmp_path)
    busy = await host.acquire("a")
    with pytest.raises(QueueFull):
        await host.acquire("b")
    busy.release()
    (await host.acquire("b")).release()
    await host.close()


async def test_before_the_start_finishes_requests_get_503(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    settings = models_file(tmp_path, '[[models]]\nid = "a"\npath = "a.gguf"\n')
    host = ModelHost(host_config(settings), catalog_for(settings), loader=Loader())
    with pytest.raises(ModelNotReady):
        await host.acquire("a")
    with pytest.raises(ModelNotFound):
        await host.acquire("z")


async def test_a_model_llama_cpp_refuses_on_demand_is_a_503_naming_the_reason(
    tmp_path: Path,
) -> None:
    host, loader = await started_host(tmp_path)

    async def refuse(path: Path, config: EngineConfig) -> Engine:
        raise ModelUnavailable(f"llama.cpp could not load the model file {path}.")

    host._loader = refuse
    with pytest.raises(ModelNotReady) as refused:
        await host.acquire("b")
    assert refused.value.message == (
        f"The model 'b' cannot be served: llama.cpp could not load the model file "
        f"{tmp_path / 'b.gguf'}."
    )
    host._loader = loader
    (await host.acquire("b")).release()  # a later try may succeed
    await host.close()
