"""Two replicas of ``python -m app serve`` on one real PostgreSQL and one real Valkey/Redis,
behind a real HAProxy, as ``compose.scale.yaml`` runs them: limits, tokens, revocation and the
usage ledger are exact across the replicas, either one cancels or deletes a background response
the other generates, and a replica killed mid-stream loses nothing committed while the other
goes on serving."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.support import (
    ADMIN_PASSWORD,
    Popen,
    access_token,
    new_api_key,
    starting,
    wait_healthy,
)
from tests.realservers import HAProxy, PostgresServer, RedisServer, find_binary, run_haproxy

COMPLETION = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 1}


@dataclass
class Cluster:
    replicas: list[tuple[str, Popen]]
    proxy: HAProxy
    database_url: str

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.replicas]

    def user(self, name: str, *, via: int = 0) -> dict[str, str]:
        """A new account, registered on replica ``via``; its bearer header."""
        url = self.urls[via]
        made = httpx.post(f"{url}/register", json={"username": name, "password": f"{name}-pw-123"})
        assert made.status_code == 201, made.text
        return auth(access_token(url, name, f"{name}-pw-123"))

    def admin(self) -> dict[str, str]:
        return auth(access_token(self.urls[0], "admin", ADMIN_PASSWORD))


def auth(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    model_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    database = postgres_server.create_database()
    redis_server.flushall()
    env = {
        "APP_DATABASE_URL": postgres_server.url(database),
        "APP_REDIS_URL": redis_server.url,
        "APP_MODEL_PATH": str(model_file),
        "APP_MODEL_NAME": "smol",
        "APP_REQUESTS_PER_MINUTE": "10",
        "APP_CONCURRENT_PER_USER": "1",
        "APP_SHUTDOWN_GRACE": "0",
        "APP_CONTEXT_SIZE": "2048",  # room for a background response that runs for seconds
    }
    binary = find_binary("REALSERVERS_HAPROXY", "haproxy")
    assert binary is not None, "haproxy is missing: run scripts/test, which installs it"
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(starting(tmp_path_factory.mktemp(f"replica{i}"), env))
            for i in range(2)
        ]
        for url, _ in replicas:  # both started together: they migrate once, between them
            wait_healthy(url)
        backends = [url.removeprefix("http://") for url, _ in replicas]
        proxy = stack.enter_context(run_haproxy(binary, backends, inter="300ms"))
        proxy.wait_for("b0", "UP")
        proxy.wait_for("b1", "UP")
        yield Cluster(replicas, proxy, postgres_server.url(database))


def test_a_token_issued_by_one_replica_works_on_the_other(cluster: Cluster) -> None:
    b = cluster.urls[1]
    alice = cluster.user("alice")  # on the first replica
    me = httpx.get(f"{b}/users/me", headers=alice)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"


def test_requests_per_minute_are_exact_across_replicas(cluster: Cluster) -> None:
    bob = cluster.user("bob")
    statuses = [
        httpx.post(
            f"{cluster.urls[i % 2]}/v1/completions", json=COMPLETION, headers=bob, timeout=60
        )
        for i in range(14)
    ]
    codes = [response.status_code for response in statuses]
    assert codes.count(200) == 10, codes
    assert codes.count(429) == 4, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in statuses if r.status_code == 429)


def test_the_concurrency_cap_holds_across_replicas(cluster: Cluster) -> None:
    a, b = cluster.urls
    carol = cluster.user("carol")
    chunks: list[float] = []
    first = threading.Event()

    def stream_on_a() -> None:
        body = {**COMPLETION, "max_tokens": 120, "ignore_eos": True, "stream": True}
        with httpx.stream(
            "POST", f"{a}/v1/completions", json=body, headers=carol, timeout=120
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(time.monotonic())
                    first.set()

    streaming = threading.Thread(target=stream_on_a)
    streaming.start()
    assert first.wait(60), "the stream never started"
    sent = time.monotonic()
    # The cap is 1: this request on the other replica waits until the stream on A ends.
    waited = httpx.post(f"{b}/v1/completions", json=COMPLETION, headers=carol, timeout=120)
    answered = time.monotonic()
    streaming.join(timeout=120)
    assert waited.status_code == 200, waited.text
    assert any(t > sent for t in chunks), "the stream was still running when B was asked"
    assert answered >= chunks[-1], "B answered while A's stream still held the user's slot"


def test_a_revoked_key_or_disabled_user_is_refused_by_the_other_replica(cluster: Cluster) -> None:
    a, b = cluster.urls
    dave = cluster.user("dave")
    key = new_api_key(a, dave["Authorization"].removeprefix("Bearer "), "laptop")
    assert httpx.get(f"{b}/v1/models", headers=auth(key)).status_code == 200
    listed = httpx.get(f"{a}/users/me/api-keys", headers=dave).json()
    revoked = httpx.delete(f"{a}/users/me/api-keys/{listed[0]['id']}", headers=dave)
    assert revoked.status_code in (200, 204), revoked.text
    assert httpx.get(f"{b}/v1/models", headers=auth(key)).status_code == 401  # the next request

    erin = cluster.user("erin")
    assert httpx.get(f"{a}/users/me", headers=erin).status_code == 200
    disabled = httpx.patch(
        f"{b}/admin/users/erin", json={"disabled": True}, headers=cluster.admin()
    )
    assert disabled.status_code == 200, disabled.text
    assert httpx.get(f"{a}/users/me", headers=erin).status_code == 401


def test_the_usage_ledger_sums_both_replicas(cluster: Cluster) -> None:
    frank = cluster.user("frank")
    for url in [*cluster.urls, cluster.urls[1], cluster.urls[1]]:
        answer = httpx.post(f"{url}/v1/completions", json=COMPLETION, headers=frank, timeout=60)
        assert answer.status_code == 200, answer.text
    for url in cluster.urls:
        days = httpx.get(f"{url}/users/me/usage", headers=frank).json()["days"]
        assert days[0]["requests"] == 4
        assert days[0]["completion_tokens"] == 4


def test_the_daily_token_limit_counts_both_replicas(cluster: Cluster) -> None:
    ivy = cluster.user("ivy")
    limited = httpx.patch(
        f"{cluster.urls[0]}/admin/users/ivy", json={"tokens_per_day": 3}, headers=cluster.admin()
    )
    assert limited.status_code == 200, limited.text
    one_token = {**COMPLETION, "ignore_eos": True}
    codes = [
        httpx.post(f"{url}/v1/completions", json=one_token, headers=ivy, timeout=60).status_code
        for url in cluster.urls * 3
    ]
    assert codes == [200, 200, 200, 429, 429, 429], codes


def test_a_background_response_is_cancelled_or_deleted_through_the_other_replica(
    cluster: Cluster,
) -> None:
    a, b = cluster.urls
    judy = cluster.user("judy")
    lines = {"type": "array", "items": {"type": "string", "minLength": 20}, "minItems": 1000}
    story = {
        "model": "smol",
        "input": "Write a very long story about the sea, line by line.",
        "max_output_tokens": 4000,
        "background": True,
        # A form that cannot end before the context does: still generating when the cancel comes.
        "text": {
            "format": {
                "type": "json_schema",
                "name": "story",
                "schema": {
                    "type": "object",
                    "properties": {"lines": lines},
                    "required": ["lines"],
                    "additionalProperties": False,
                },
            }
        },
    }
    made = httpx.post(f"{a}/v1/responses", json=story, headers=judy, timeout=60)
    assert made.status_code == 200, made.text
    path = f"/v1/responses/{made.json()['id']}"
    # B passes the cancel on to A and answers once A has stopped it.
    cancelled = httpx.post(f"{b}{path}/cancel", headers=judy, timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert httpx.get(f"{a}{path}", headers=judy).json()["status"] == cancelled.json()["status"]
    made = httpx.post(f"{a}/v1/responses", json=story, headers=judy, timeout=60)
    assert made.status_code == 200, made.text  # the first one no longer holds judy's one slot
    path = f"/v1/responses/{made.json()['id']}"
    assert httpx.delete(f"{b}{path}", headers=judy, timeout=60).status_code == 200
    for url in (a, b):  # and A, having stopped it, did not write it back
        assert httpx.get(f"{url}{path}", headers=judy).status_code == 404


def served_by(proxy: HAProxy) -> dict[str, int]:
    return {row["svname"]: int(row["stot"]) for row in proxy.stats()}


def test_haproxy_keeps_a_caller_on_one_replica_and_survives_a_kill_mid_stream(
    cluster: Cluster,
) -> None:
    proxy, front = cluster.proxy, cluster.proxy.url
    grace = cluster.user("grace")
    before = served_by(proxy)
    for _ in range(4):  # a new connection each time: HAProxy picks the replica per request
        answer = httpx.post(f"{front}/v1/completions", json=COMPLETION, headers=grace, timeout=60)
        assert answer.status_code == 200, answer.text
    after = served_by(proxy)
    moved = {name: after[name] - before[name] for name in after}
    assert sorted(moved.values()) == [0, 4], f"one caller, one replica: {moved}"
    home = next(name for name, count in moved.items() if count)
    home_index = int(home.removeprefix("b"))
    usage_before = httpx.get(f"{front}/users/me/usage", headers=grace).json()["days"][0]

    # Kill grace's replica while it streams to her.
    _, process = cluster.replicas[home_index]
    body: dict[str, Any] = {**COMPLETION, "max_tokens": 120, "ignore_eos": True, "stream": True}
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream(
            "POST", f"{front}/v1/completions", json=body, headers=grace, timeout=60
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: {"):
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=30)
    proxy.wait_for(home, "DOWN")

    # The other replica serves everyone, grace included, from the same database.
    henry = cluster.user("henry", via=1 - home_index)
    answer = httpx.post(f"{front}/v1/completions", json=COMPLETION, headers=henry, timeout=60)
    assert answer.status_code == 200, answer.text
    usage_after = httpx.get(f"{front}/users/me/usage", headers=grace).json()["days"][0]
    # Nothing committed was lost; the killed request was never committed (nor billed).
    assert usage_after["requests"] == usage_before["requests"] == 4
    me = httpx.get(f"{front}/users/me", headers=grace)
    assert me.status_code == 200, me.text
