"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# As `python -m app serve` does (see app/__main__.py): llama.cpp's OpenMP threads would otherwise
# spin between decodes, which on a busy 2-core machine starves everything else in the process
# (the in-thread test servers, the clients). Set before anything imports llama_cpp.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

TEST_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_file() -> Path:
    """The real SmolLM2 GGUF that scripts/test fetches (APP_TEST_MODEL says where)."""
    default = Path.home() / ".cache" / "llm-service" / "models" / TEST_MODEL_NAME
    path = Path(os.environ.get("APP_TEST_MODEL", default))
    if not path.is_file():
        pytest.fail(f"test model missing at {path}: run scripts/test, which fetches it")
    return path


@pytest.fixture(scope="session")
def embedding_model_file() -> Path:
    """The real all-MiniLM-L6-v2 GGUF that scripts/test converts once (and says where in
    APP_TEST_EMBEDDING_MODEL)."""
    default = Path.home() / ".cache" / "llm-service" / "models" / "all-MiniLM-L6-v2-f16.gguf"
    path = Path(os.environ.get("APP_TEST_EMBEDDING_MODEL", default))
    if not path.is_file():
        pytest.fail(f"embedding test model missing at {path}: run scripts/test, which makes it")
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (or valkey-server) on loopback, without persistence, for the
    session; scripts/test installs Debian's."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run scripts/test, which installs it")
    folder = tmp_path_factory.mktemp("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"{binary} did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
