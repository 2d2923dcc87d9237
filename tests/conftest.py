"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TEST_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_file() -> Path:
    """The real SmolLM2 GGUF that scripts/test fetches (APP_TEST_MODEL says where)."""
    default = Path.home() / ".cache" / "llm-service" / "models" / TEST_MODEL_NAME
    path = Path(os.environ.get("APP_TEST_MODEL", default))
    if not path.is_file():
        pytest.fail(f"test model missing at {path}: run scripts/test, which fetches it")
    return path
