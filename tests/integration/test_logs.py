"""The logs of a real ``python -m app serve``: JSON lines, one id per request, no secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.integration.support import ADMIN_PASSWORD, access_token, new_api_key, serving

SECRET_PASSWORD = "carol-secret-password-1"
WRONG_PASSWORD = "carol-wrong-password-2"


def test_one_request_tells_its_story_under_one_id_and_no_secret_is_logged(
    tmp_path: Path, model_file: Path
) -> None:
    with serving(
        tmp_path, APP_MODEL_PATH=str(model_file), APP_MODEL_NAME="smol", APP_LOG_FORMAT="json"
    ) as (url, _):
        port = url.rsplit(":", 1)[1]
        registered = httpx.post(
            f"{url}/register", json={"username": "carol", "password": SECRET_PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        refused = httpx.post(f"{url}/token", data={"username": "carol", "password": WRONG_PASSWORD})
        assert refused.status_code == 401
        token = access_token(url, "carol", SECRET_PASSWORD)
        key = new_api_key(url, token, "logs")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": "story-1"},
            extra_body={"ignore_eos": True},  # all 8 tokens, whatever the model samples
        )
        usage = next(chunk.usage for chunk in stream if chunk.usage is not None)
        admin = access_token(url, "admin", ADMIN_PASSWORD)

    text = (tmp_path / f"serve-{port}.log").read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]  # all JSON

    story = [line for line in lines if line.get("request_id") == "story-1"]
    assert story, "the request left no line"
    (access,) = [line for line in story if line["logger"] == "app.access"]
    assert access["method"] == "POST"
    assert access["path"] == "/v1/chat/completions"
    assert access["status"] == 200
    assert access["user"] == "carol"
    assert access["model"] == "smol"
    assert access["prompt_tokens"] == usage.prompt_tokens
    assert access["completion_tokens"] == usage.completion_tokens == 8
    assert 0 < access["ttft_ms"] <= access["duration_ms"]
    # Every request has an access line with an id of its own.
    accesses = [line for line in lines if line["logger"] == "app.access"]
    assert len({line["request_id"] for line in accesses}) == len(accesses) >= 6
    failed = [line for line in accesses if line["path"] == "/token" and line["status"] == 401]
    assert failed
    assert failed[0]["error"] == "invalid_credentials"

    for secret in (SECRET_PASSWORD, WRONG_PASSWORD, ADMIN_PASSWORD, token, key, admin):
        assert secret not in text
    assert "Bearer" not in text
    assert "authorization" not in text.lower()
