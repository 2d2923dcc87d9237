"""Schema fuzzing: schemathesis generates requests from /openapi.json for every operation and
checks the answers: no 5xx, and each status, content type and body as documented.

Runs over a real uvicorn server with a fake engine (generation is not what is fuzzed here, the
HTTP surface is), authenticated with an admin's API key, on a throwaway database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.factory import create_app
from app.settings import Settings
from tests.integration.support import access_token, new_api_key, served
from tests.unit.fakes import FakeEngine

ADMIN_PASSWORD = "fuzz-admin-password"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    settings = _settings(tmp_path_factory.mktemp("fuzz") / "data")
    with served(create_app(settings, engine=FakeEngine(context_size=4096))) as url:
        yield url, new_api_key(url, access_token(url, "admin", ADMIN_PASSWORD), "fuzz")


def _settings(data_dir: Path) -> Settings:
    return Settings.from_mapping(
        {
            "APP_DATA_DIR": str(data_dir),
            "APP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "APP_PASSWORD_HASH_MEMORY_KIB": "1024",
            "APP_PASSWORD_HASH_TIME_COST": "1",
            "APP_REQUESTS_PER_MINUTE": "0",
            "APP_TOKENS_PER_DAY": "0",
            "APP_LOG_LEVEL": "warning",
        }
    )


# Not checked: that every schema-valid request is accepted (a wrong current password or a token
# id past the vocabulary is schema-valid and rightly refused), and that every schema-invalid one
# is refused (Litestar coerces like types, e.g. 0 for false, as OpenAI's own API does).
EXCLUDED: list[Any] = [checks.positive_data_acceptance, checks.negative_data_rejection]

# The document the service serves, built without serving (schemathesis needs it at import).
schema = schemathesis.openapi.from_dict(
    create_app(_settings(Path("/nonexistent")), engine=FakeEngine()).openapi_schema.to_schema()
)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI failures reproduce
)
def test_every_operation_answers_as_documented(case: Any, service: tuple[str, str]) -> None:
    url, key = service
    case.call_and_validate(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        excluded_checks=EXCLUDED,
    )


def test_the_fuzzed_service_still_answers(service: tuple[str, str]) -> None:
    url, _ = service
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
