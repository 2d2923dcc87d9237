"""Model delivery as a user meets it: ``model pull``/``model list``, tokens, progress, resume,
damaged caches, offline starts, and the Hub's refusals, against a local server that speaks the
Hub's download protocol."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from app.settings import DEFAULT_MODEL_REVISION
from tests.hubserver import serve_hub
from tests.integration.support import (
    ADMIN_PASSWORD,
    FILE,
    REPO,
    access_token,
    app_env,
    free_port,
    run_app,
    serving,
)

HUB_MODEL = {"APP_MODEL_REPO": REPO, "APP_MODEL_FILE": FILE, "APP_MODEL_NAME": "smol"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a command that stopped with exit status 1 and one sentence, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def cached_blob(tmp_path: Path, model_file: Path) -> Path:
    return tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs" / sha256(model_file)


def test_model_pull_downloads_the_pinned_revision_and_model_list_shows_it(
    tmp_path: Path, model_file: Path
) -> None:
    with serve_hub({(REPO, FILE): model_file}) as hub:
        before = run_app(tmp_path, "model", "list", HF_ENDPOINT=hub.url, **HUB_MODEL)
        assert "not downloaded: run 'python -m app model pull'" in before.stdout
        assert hub.requests == [], "model list works without the network"

        pulled = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
        assert pulled.returncode == 0, pulled.stderr
        path = Path(pulled.stdout.split(": ", 1)[1].split(" (")[0])
        assert sha256(path) == sha256(model_file)
        # The default revision is the commit the README names, not whatever main is today.
        assert [r.path for r in hub.downloads()] == [
            f"/{REPO}/resolve/{DEFAULT_MODEL_REVISION}/{FILE}"
        ]

        again = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
        assert again.returncode == 0, again.stderr
        assert len(hub.downloads()) == 1, "a good cached copy is not downloaded again"

    listing = run_app(tmp_path, "model", "list", HF_HUB_OFFLINE="1", **HUB_MODEL)
    assert listing.returncode == 0, listing.stderr
    assert "  smol\n" in listing.stdout
    assert f"source: {FILE} from {REPO}@{DEFAULT_MODEL_REVISION}" in listing.stdout
    assert f"file:   {path} (" in listing.stdout


def test_the_token_is_sent_and_the_hubs_refusals_are_one_sentence(
    tmp_path: Path, model_file: Path
) -> None:
    with serve_hub(
        {(REPO, FILE): model_file}, tokens={"hf_good", "hf_other"}, granted={"hf_good"}
    ) as hub:
        missing = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
        assert refused(missing).splitlines()[-1] == (
            f"error: The Hub wants a token for {REPO} (401): it is private or gated, or does not "
            "exist; set HUGGINGFACE_TOKEN (or HF_TOKEN) to a token from "
            "https://huggingface.co/settings/tokens, and check APP_MODEL_REPO."
        )

        wrong = run_app(
            tmp_path, "model", "pull", HF_ENDPOINT=hub.url, HUGGINGFACE_TOKEN="hf_bad", **HUB_MODEL
        )
        assert f"The Hub refused the token for {REPO} (401)" in refused(wrong)
        assert "hf_bad" not in wrong.stderr

        no_access = run_app(
            tmp_path, "model", "pull", HF_ENDPOINT=hub.url, HF_TOKEN="hf_other", **HUB_MODEL
        )
        assert f"{REPO} is gated: accept its terms on the Hub" in refused(no_access)

        hub.requests.clear()
        granted = run_app(
            tmp_path, "model", "pull", HF_ENDPOINT=hub.url, HUGGINGFACE_TOKEN="hf_good", **HUB_MODEL
        )
        assert granted.returncode == 0, granted.stderr
        assert "Traceback" not in granted.stderr
        assert hub.requests, "the Hub was asked"
        assert all(r.header("Authorization") == "Bearer hf_good" for r in hub.requests)


def test_a_401_stops_the_server_start_with_the_same_sentence(
    tmp_path: Path, model_file: Path
) -> None:
    with serve_hub({(REPO, FILE): model_file}, tokens={"hf_good"}) as hub:
        result = run_app(
            tmp_path, "serve", HF_ENDPOINT=hub.url, APP_PORT=str(free_port()), **HUB_MODEL
        )
    assert f"The Hub wants a token for {REPO} (401)" in refused(result)


def test_a_download_logs_its_progress_and_resumes_after_a_cut_connection(
    tmp_path: Path, model_file: Path
) -> None:
    size = model_file.stat().st_size
    cut = 30 << 20
    with serve_hub({(REPO, FILE): model_file}, cuts=[cut], pause_per_mib=0.01) as hub:
        result = run_app(
            tmp_path,
            "model",
            "pull",
            HF_ENDPOINT=hub.url,
            APP_DOWNLOAD_LOG_SECONDS="0.2",
            **HUB_MODEL,
        )
    assert result.returncode == 0, result.stderr
    gets = hub.downloads()
    assert len(gets) == 2
    # The second request asks only for what the first one did not deliver.
    assert gets[1].header("Range") == f"bytes={cut}-"
    assert sha256(cached_blob(tmp_path, model_file)) == sha256(model_file)
    # Not a terminal: log lines with percent, rate and time left rather than a bar.
    lines = re.findall(
        rf"downloading {re.escape(FILE)}: (\d+)% of {size / 1e6:.1f} MB, [\d.]+ MB/s, "
        r"\d\d:\d\d:\d\d left",
        result.stderr,
    )
    assert len(lines) >= 2, result.stderr
    assert [int(p) for p in lines] == sorted(int(p) for p in lines)
    assert "Traceback" not in result.stderr


def test_health_reports_the_download_percent(tmp_path: Path, model_file: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: list[float] = []
    with serve_hub({(REPO, FILE): model_file}, pause_per_mib=0.03) as hub:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            env=app_env(tmp_path, HF_ENDPOINT=hub.url, APP_PORT=str(port), **HUB_MODEL),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    body = httpx.get(f"{url}/health", timeout=5).json()
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if body["status"] == "ok":
                    break
                if body["status"] == "downloading" and body["download_percent"] is not None:
                    seen.append(body["download_percent"])
                    assert body["models"][0]["state"] == "downloading"
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(timeout=60)
    assert len(seen) >= 2, seen
    assert seen == sorted(seen)
    assert 0 <= seen[0] < seen[-1] <= 100


def test_a_damaged_cached_file_is_found_and_fetched_again(tmp_path: Path, model_file: Path) -> None:
    with serve_hub({(REPO, FILE): model_file}) as hub:
        assert run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL).returncode == 0
        blob = cached_blob(tmp_path, model_file)

        with blob.open("r+b") as f:  # a flipped stretch in the middle
            f.seek(blob.stat().st_size // 2)
            f.write(b"\0" * 4096)
        damaged = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
        assert damaged.returncode == 0, damaged.stderr
        assert "is damaged (its sha256 does not match the Hub's); downloading it again" in (
            damaged.stderr
        )
        assert sha256(blob) == sha256(model_file)

        with blob.open("r+b") as f:  # a truncated copy
            f.truncate(1 << 20)
        with serving(tmp_path, HF_ENDPOINT=hub.url, **HUB_MODEL) as (url, _):
            assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert sha256(blob) == sha256(model_file)
        assert len(hub.downloads()) == 3

    blob.write_bytes(b"GGUF and nothing else")
    offline = run_app(tmp_path, "model", "pull", HF_HUB_OFFLINE="1", **HUB_MODEL)
    assert "the Hugging Face cache has no good copy" in refused(offline)


def test_a_cached_model_starts_with_hf_hub_offline(tmp_path: Path, model_file: Path) -> None:
    with serve_hub({(REPO, FILE): model_file}) as hub:
        assert run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL).returncode == 0
    with serving(tmp_path, HF_HUB_OFFLINE="1", **HUB_MODEL) as (url, _):
        assert httpx.get(f"{url}/health").json()["model"] == "smol"


def test_a_file_from_the_hub_that_is_not_gguf_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"<html>not a model</html>")
    with serve_hub({(REPO, FILE): bogus}) as hub:
        result = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
    assert re.search(rf"The model file \S+/{re.escape(FILE)} is not a GGUF file", refused(result))


def test_a_gguf_that_llama_cpp_cannot_load_stops_the_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    result = run_app(tmp_path, "serve", APP_MODEL_PATH=str(broken), APP_PORT=str(free_port()))
    assert f"llama.cpp could not load the model file {broken}" in refused(result)


def test_two_models_route_by_name_and_at_most_one_is_loaded(
    tmp_path: Path, model_file: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
[[models]]
id = "smol-a"
aliases = ["a"]
path = "{model_file}"
context_size = 1024

[[models]]
id = "smol-b"
aliases = ["b", "the-other"]
path = "{model_file}"
parallel = 1
"""
    )
    with serving(tmp_path, APP_MODELS_FILE=str(models), APP_MAX_LOADED_MODELS="1") as (url, _):
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=access_token(url, "admin", ADMIN_PASSWORD), max_retries=0
        )

        def states() -> dict[str, str]:
            return {m["id"]: m["state"] for m in httpx.get(f"{url}/health").json()["models"]}

        assert [m.id for m in client.models.list()] == ["smol-a", "smol-b"]
        assert client.models.retrieve("the-other").id == "smol-b"
        assert states() == {"smol-a": "ready", "smol-b": "unloaded"}

        # A request by alias answers with the model's id.
        assert client.completions.create(model="a", prompt="Hi", max_tokens=2).model == "smol-a"

        # Model b is wanted while a stream runs on a: b waits for a to be free, a's stream is
        # not cut, then a is unloaded to make room.
        stream = client.completions.create(
            model="smol-a",
            prompt="Once upon a time",
            max_tokens=300,  # seconds of work: still running when b is asked for
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks)  # the stream has begun
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(client.completions.create, model="b", prompt="Hello", max_tokens=3)
            time.sleep(0.5)
            assert not other.done()
            assert states() == {"smol-a": "ready", "smol-b": "unloaded"}
            rest = list(chunks)
            assert rest[-2].choices[0].finish_reason == "length"
            usage = rest[-1].usage
            assert usage is not None
            assert usage.completion_tokens == 300  # every token: the stream was not cut
            assert other.result(timeout=120).model == "smol-b"
        assert states() == {"smol-a": "unloaded", "smol-b": "ready"}

        # And back: a loads again on demand.
        assert client.completions.create(model="smol-a", prompt="Hi", max_tokens=2).choices
        assert states() == {"smol-a": "ready", "smol-b": "unloaded"}

        with pytest.raises(openai.NotFoundError) as refused:
            client.completions.create(model="smol-c", prompt="Hi", max_tokens=2)
        assert refused.value.code == "model_not_found"


def test_a_bad_models_file_stops_the_start_with_one_sentence(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nid = "x"\nrepo = "org/repo"\n')
    result = run_app(tmp_path, "serve", APP_MODELS_FILE=str(models))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: APP_MODELS_FILE {models}, model 'x': give either path, or repo and file."
    )


def test_a_download_killed_midway_resumes_on_the_next_run(tmp_path: Path, model_file: Path) -> None:
    blobs = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    with serve_hub({(REPO, FILE): model_file}, pause_per_mib=0.05) as hub:
        pulling = subprocess.Popen(
            [sys.executable, "-m", "app", "model", "pull"],
            env=app_env(tmp_path, HF_ENDPOINT=hub.url, **HUB_MODEL),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            partial: list[Path] = []
            while time.monotonic() < deadline and pulling.poll() is None:
                partial = list(blobs.glob("*.incomplete")) if blobs.is_dir() else []
                if partial and partial[0].stat().st_size > 8 << 20:
                    break
                time.sleep(0.05)
        finally:
            pulling.kill()
            pulling.wait()
        assert partial, "the download never got going"
        kept = partial[0].stat().st_size

        hub.pause_per_mib = 0
        resumed = run_app(tmp_path, "model", "pull", HF_ENDPOINT=hub.url, **HUB_MODEL)
    assert resumed.returncode == 0, resumed.stderr
    assert hub.downloads()[-1].header("Range") == f"bytes={kept}-"
    assert f"resuming the download of {FILE} at {kept / 1e6:.1f} MB" in resumed.stderr
    assert sha256(cached_blob(tmp_path, model_file)) == sha256(model_file)
