"""Settings parsing: defaults, the environment over .env, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ConfigError, Settings, describe_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_documented_model() -> None:
    settings = Settings.from_mapping({})
    assert settings.model_name == "tinyllama-1.1b"
    assert settings.model_repo == "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
    assert settings.model_file == "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
    assert settings.model_path is None
    assert settings.algorithm == "HS256"
    assert settings.port == 8002


def test_values_are_converted_from_strings() -> None:
    settings = Settings.from_mapping(
        {
            "APP_PORT": "9000",
            "APP_TEMPERATURE": "0.2",
            "APP_MAX_LENGTH": "64",
            "APP_THREADS": "3",
            "APP_MODEL_NAME": "smol",
            "ACCESS_TOKEN_EXPIRE_MINUTES": "5",
            "ALGORITHM": "HS512",
        }
    )
    assert (settings.port, settings.temperature, settings.max_length) == (9000, 0.2, 64)
    assert (settings.threads, settings.model_name) == (3, "smol")
    assert (settings.access_token_expire_minutes, settings.algorithm) == (5, "HS512")


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_mapping({"APP_PORT": "", "APP_THREADS": "  ", "APP_MODEL_PATH": ""})
    assert settings.port == 8002
    assert settings.threads is None
    assert settings.model_path is None


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("APP_PORT=7000\nAPP_MODEL_NAME=from-file\n")
    settings = Settings.from_env({"APP_PORT": "7001"}, env_file=env_file)
    assert settings.port == 7001
    assert settings.model_name == "from-file"


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert Settings.from_env({}, env_file=tmp_path / "absent").port == 8002


def test_hf_token_is_a_fallback_for_huggingface_token() -> None:
    assert Settings.from_mapping({"HF_TOKEN": "hf_a"}).huggingface_token == "hf_a"
    both = {"HF_TOKEN": "hf_a", "HUGGINGFACE_TOKEN": "hf_b"}
    assert Settings.from_mapping(both).huggingface_token == "hf_b"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("APP_PORT", "abc", "invalid value 'abc' for APP_PORT: Expected `int`, got `str`"),
        ("APP_PORT", "70000", "invalid value '70000' for APP_PORT: Expected `int` <= 65535"),
        ("APP_TEMPERATURE", "3", "invalid value '3' for APP_TEMPERATURE: Expected `float` <= 2.0"),
        ("APP_MAX_LENGTH", "0", "invalid value '0' for APP_MAX_LENGTH: Expected `int` >= 1"),
        ("APP_CONTEXT_SIZE", "ten", "for APP_CONTEXT_SIZE: Expected `int`, got `str`"),
        ("APP_THREADS", "0", "invalid value '0' for APP_THREADS: Expected `int` >= 1"),
        ("ALGORITHM", "RS256", "invalid value 'RS256' for ALGORITHM: must be one of HS256, HS384"),
        ("ALGORITHM", "none", "for ALGORITHM: must be one of HS256, HS384, HS512"),
        ("APP_LOG_LEVEL", "loud", "for APP_LOG_LEVEL: must be one of"),
        ("APP_MODEL_FILE", "model.bin", "for APP_MODEL_FILE: Expected `str` matching regex"),
        ("APP_MODEL_REPO", "no-slash", "for APP_MODEL_REPO: Expected `str` matching regex"),
        (
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "-5",
            "for ACCESS_TOKEN_EXPIRE_MINUTES: Expected `int` >= 1",
        ),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({name: value})
    assert expected in str(caught.value)


def test_secrets_are_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({"JWT_SECRET_KEY": "too-short-secret"})
    message = str(caught.value)
    assert "JWT_SECRET_KEY" in message
    assert "length >= 32" in message
    assert "too-short-secret" not in message


def test_env_example_documents_every_setting_with_the_same_text() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name, description, _default in describe_settings():
        assert description, f"{name} has no description"
        assignment = next(
            (i for i, line in enumerate(lines) if line.lstrip("# ").startswith(f"{name}=")), None
        )
        assert assignment is not None, f".env.example does not list {name}"
        assert lines[assignment - 1] == f"# {description}", (
            f".env.example explains {name} differently"
        )


def test_env_example_is_a_valid_configuration() -> None:
    Settings.from_env({}, env_file=ROOT / ".env.example")
