"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# As `python -m app serve` does (see app/__main__.py): llama.cpp's OpenMP threads would otherwise
# spin between decodes, which on a busy 2-core machine starves everything else in the process
# (the in-thread test servers, the clients). Set before anything imports llama_cpp.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

# Real PostgreSQL, Redis and HAProxy servers on loopback (tests/realservers.py).
pytest_plugins = ["tests.realservers"]

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use ``backend`` (through ``database_url`` or ``each_database``) run once on
    SQLite and once on PostgreSQL; ``@pytest.mark.sqlite_only`` ones (which read the SQLite file
    itself) on SQLite alone."""
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        backends = ["sqlite"] if only_sqlite else ["sqlite", "postgresql"]
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's user database lives: a SQLite file, or a fresh database on the session's
    real PostgreSQL server (tests/realservers.py)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'app.db'}"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
def each_database(backend: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``settings_for`` (tests/unit/support.py) puts the app's database on each backend in turn:
    a module opts in with ``pytestmark = pytest.mark.usefixtures("each_database")``."""
    from tests.unit import support

    if backend == "postgresql":
        monkeypatch.setattr(support, "DATABASE_URL", database_url)
    return backend
