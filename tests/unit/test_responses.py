"""The Responses API above the engine: what the chat machinery is asked, the store (privacy,
chaining, input items, deletion with the user, retention), the stream's events, background
responses and bad requests, over a scripted engine and a real SQLite database."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from app.db import Database
from app.db.tables import responses
from app.inference.engine import GenerationEvent, SamplingParams
from app.openai import responses_leases
from tests.unit.fakes import FakeEngine
from tests.unit.support import (
    admin_client,
    bearer,
    login,
    weather_call_words,
)

# The accounts behind these tests live on SQLite and on a real PostgreSQL in turn.
pytestmark = pytest.mark.usefixtures("each_database")

MODEL = "tinyllama-1.1b"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL_WORDS = weather_call_words("Oslo")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(words=("Sure.", *CALL_WORDS))


@pytest.fixture
async def client(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[AsyncTestClient[Any]]:
    async with admin_client(tmp_path, engine) as client:
        yield client


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "Weather in Oslo?", "max_output_tokens": 50, **fields}


async def create(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/responses", json=body(**fields))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def other_user(client: AsyncTestClient[Any]) -> dict[str, str]:
    created = await client.post(
        "/admin/users", json={"username": "mallory", "password": "mallory-password-1"}
    )
    assert created.status_code == 201, created.text
    token = await login(client, "mallory", "mallory-password-1")
    return bearer(token)


async def test_a_call_comes_back_as_a_function_call_item(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    response = await create(client, tools=[TOOL], instructions="Be brief.")
    assert response["status"] == "completed"
    message, call = response["output"]
    assert message["content"][0]["text"] == "Sure."
    assert call["type"] == "function_call"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
    assert call["call_id"].startswith("call_")
    assert [m.role for m in engine.chats[-1]] == ["system", "user"]
    assert response["usage"]["total_tokens"] == (
        response["usage"]["input_tokens"] + response["usage"]["output_tokens"]
    )


async def test_a_follow_up_continues_the_stored_conversation(
    client: AsyncTestClient[Any], engine: FakeEngine
) -> None:
    first = await create(client, tools=[TOOL], instructions="Old instructions.")
    call = first["output"][1]
    output = [{"type": "function_call_output", "call_id": call["call_id"], "output": "cold"}]
    second = await create(
        client,
        previous_response_id=first["id"],
        input=output,
        tools=[TOOL],
        instructions="New instructions.",
    )
    assert second["previous_response_id"] == first["id"]
    history = engine.chats[-1]
    # The instructions are this request's; the earlier turns, the call and its result follow.
    assert [m.role for m in history] == ["system", "user", "assistant", "tool"]
    assert history[0].content == "New instructions."
    assert history[2].tool_calls[0].id == call["call_id"]
    assert history[3].content == "cold"


async def test_stored_responses_are_their_owners_alone(client: AsyncTestClient[Any]) -> None:
    mine = await create(client)
    theirs = await other_user(client)
    for method, path in [
        ("GET", f"/v1/responses/{mine['id']}"),
        ("GET", f"/v1/responses/{mine['id']}/input_items"),
        ("DELETE", f"/v1/responses/{mine['id']}"),
        ("POST", f"/v1/responses/{mine['id']}/cancel"),
    ]:
        answer = await client.request(method, path, headers=theirs)
        assert answer.status_code == 404, (method, path, answer.text)
    chained = await client.post(
        "/v1/responses", json=body(previous_response_id=mine["id"]), headers=theirs
    )
    assert chained.status_code == 400
    assert chained.json()["error"]["param"] == "previous_response_id"
    assert (await client.get(f"/v1/responses/{mine['id']}")).status_code == 200


async def test_input_items_are_listed_with_ids_in_either_order(
    client: AsyncTestClient[Any],
) -> None:
    items = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "One."}]},
        {"type": "message", "role": "user", "content": "Two."},
    ]
    response = await create(client, input=items)
    path = f"/v1/responses/{response['id']}/input_items"
    newest = (await client.get(path, params={"limit": 2})).json()
    assert [i["content"][0]["text"] for i in newest["data"]] == ["Two.", "One."]
    assert newest["has_more"] is True
    rest = (await client.get(path, params={"after": newest["last_id"]})).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["Be brief."]
    oldest = (await client.get(path, params={"order": "asc"})).json()
    assert [i["role"] for i in oldest["data"]] == ["system", "user", "user"]
    assert all(i["id"].startswith("msg_") for i in oldest["data"])


async def test_not_stored_is_not_kept(client: AsyncTestClient[Any]) -> None:
    response = await create(client, store=False)
    assert (await client.get(f"/v1/responses/{response['id']}")).status_code == 404


@pytest.mark.sqlite_only
async def test_deleting_a_user_deletes_their_responses(
    client: AsyncTestClient[Any], tmp_path: Path
) -> None:
    theirs = await other_user(client)
    created = await client.post("/v1/responses", json=body(), headers=theirs)
    response_id = created.json()["id"]
    assert (await client.delete("/admin/users/mallory")).status_code in (200, 204)
    with sqlite3.connect(tmp_path / "data" / "app.db") as db:
        (count,) = db.execute(
            "SELECT count(*) FROM responses WHERE id = ?", (response_id,)
        ).fetchone()
    assert count == 0


async def test_old_responses_are_past_retention(
    client: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    response = await create(client)
    later = time.time() + 31 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    assert (await client.get(f"/v1/responses/{response['id']}")).status_code == 404


async def test_a_stream_sends_the_events_in_order(client: AsyncTestClient[Any]) -> None:
    answer = await client.post("/v1/responses", json=body(tools=[TOOL], stream=True))
    events = []
    for block in answer.text.strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    names = [name for name, _ in events]
    runs = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]  # deltas repeat
    assert runs == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert all(data["type"] == name for name, data in events)
    added = [data for name, data in events if name == "response.output_item.added"][1]["item"]
    assert added["arguments"] == ""
    assert added["status"] == "in_progress"
    final = events[-1][1]["response"]
    assert json.loads(final["output"][1]["arguments"]) == {"city": "Oslo"}
    # The events say what the final object says (the text beside a call, without its spaces).
    (done,) = [data for name, data in events if name == "response.output_text.done"]
    assert done["text"] == final["output"][0]["content"][0]["text"] == "Sure."
    # And a response not streamed has the same output.
    plain = (await create(client, tools=[TOOL]))["output"]

    def shape(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (i["type"], i["status"], i.get("arguments"), [c["text"] for c in i.get("content", [])])
            for i in items
        ]

    assert shape(plain) == shape(final["output"])
    stored = (await client.get(f"/v1/responses/{final['id']}")).json()
    assert stored["output"] == final["output"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_of_nothing_is_an_empty_message(tmp_path: Path, stream: bool) -> None:
    """A reply with no text and no call still has its message item (its text empty), as any
    text reply does: the SDKs' ``output_text`` and an agent's final output read it."""
    async with admin_client(tmp_path, FakeEngine(words=())) as client:
        answer = await client.post("/v1/responses", json=body(stream=stream))
        assert answer.status_code == 200, answer.text
        if stream:
            events = [
                json.loads(block.split("\ndata: ")[1]) for block in answer.text.split("\n\n")[:-1]
            ]
            names = [event["type"] for event in events]
            assert names[2:-1] == [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
            ]
            result = events[-1]["response"]
        else:
            result = answer.json()
        assert result["status"] == "completed"
        [item] = result["output"]
        assert item["type"] == "message"
        assert item["status"] == "completed"
        assert [(part["type"], part["text"]) for part in item["content"]] == [("output_text", "")]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_cut_short_is_no_output_item(
    client: AsyncTestClient[Any], stream: bool
) -> None:
    """A call cut by max_output_tokens is not in the output (its partial arguments are no call
    to run, nor part of the conversation); a stream shows it ``incomplete`` as it goes."""
    answer = await client.post(
        "/v1/responses", json=body(tools=[TOOL], max_output_tokens=4, stream=stream)
    )
    assert answer.status_code == 200, answer.text
    if stream:
        events = [json.loads(b.split("\ndata: ")[1]) for b in answer.text.split("\n\n")[:-1]]
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        assert [(item["type"], item["status"]) for item in done] == [
            ("message", "completed"),
            ("function_call", "incomplete"),
        ]
        result = events[-1]["response"]
    else:
        result = answer.json()
    assert result["status"] == "incomplete"
    assert [item["type"] for item in result["output"]] == ["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_of_whitespace_is_that_text(tmp_path: Path, stream: bool) -> None:
    async with admin_client(tmp_path, FakeEngine(words=("\n",))) as client:
        answer = await client.post("/v1/responses", json=body(stream=stream))
        assert answer.status_code == 200, answer.text
        if stream:
            events = [json.loads(b.split("\ndata: ")[1]) for b in answer.text.split("\n\n")[:-1]]
            deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
            assert deltas == [" \n"]
            result = events[-1]["response"]
        else:
            result = answer.json()
        [item] = result["output"]
        assert item["content"][0]["text"] == " \n"
        follow = await client.post(
            "/v1/responses", json=body(previous_response_id=result["id"], input="and?")
        )
        assert follow.status_code == 200, follow.text


async def test_a_cut_answer_is_an_incomplete_message(client: AsyncTestClient[Any]) -> None:
    result = await create(client, max_output_tokens=1)
    assert result["status"] == "incomplete"
    assert [item["status"] for item in result["output"]] == ["incomplete"]


async def test_a_background_response_is_stored_when_done(client: AsyncTestClient[Any]) -> None:
    response = await create(client, background=True)
    assert response["status"] == "queued"
    for _ in range(100):
        stored = (await client.get(f"/v1/responses/{response['id']}")).json()
        if stored["status"] == "completed":
            break
        await asyncio.sleep(0.02)
    assert stored["status"] == "completed"
    assert stored["output"]
    cancelled = await client.post(f"/v1/responses/{response['id']}/cancel")
    assert cancelled.json()["status"] == "completed"  # finished already: as it is
    plain = await create(client)
    refused = await client.post(f"/v1/responses/{plain['id']}/cancel")
    assert refused.status_code == 400


class HeldEngine(FakeEngine):
    """Generates nothing until ``release`` is set: a background response stays in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.stopped = asyncio.Event()

    async def generate(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, owner: object = None
    ) -> AsyncIterator[GenerationEvent]:
        try:
            await self.release.wait()
        finally:
            self.stopped.set()  # released, or cancelled
        async for event in super().generate(prompt_tokens, params, owner=owner):
            yield event


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, engine: FakeEngine
) -> AsyncIterator[tuple[AsyncTestClient[Any], AsyncTestClient[Any]]]:
    """Two apps on one database, the first over ``engine``; signed in as the admin on each."""
    async with (
        admin_client(tmp_path, engine) as first,
        admin_client(tmp_path, FakeEngine()) as second,
    ):
        yield first, second


async def test_a_background_response_whose_replica_stopped_is_reported_failed(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = HeldEngine()
    async with two_replicas(tmp_path, engine) as (running, other):
        created = await create(running, background=True)
        path = f"/v1/responses/{created['id']}"
        running_now = (await other.get(path)).json()["status"]
        assert running_now in ("queued", "in_progress")  # its lease holds
        # Its replica stops renewing the lease (it died), and the lease runs out.
        db = Database(database_url)
        await db.open()
        try:
            await db.execute(sa.update(responses).values(lease_until=0))
        finally:
            await db.close()
        lost = (await other.get(path)).json()
        assert lost["status"] == "failed"
        assert lost["error"] == {"code": "server_error", "message": responses_leases.LOST.message}
        refused = await other.post("/v1/responses", json=body(previous_response_id=created["id"]))
        assert refused.status_code == 400
        assert "is failed" in refused.json()["error"]["message"]
        # Had it only been slow, what it writes later does not undo that, nor does it serve it.
        with caplog.at_level(logging.INFO, logger="app.openai.response_store"):
            engine.release.set()
            for _ in range(500):  # until its last save was tried, and refused
                if any("dropped a save" in r.getMessage() for r in caplog.records):
                    break
                assert (await running.get(path)).json() == lost  # meanwhile too
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the replica never tried its last save")
        for client in (running, other):
            assert (await client.get(path)).json() == lost


async def test_any_replica_cancels_or_deletes_a_background_response(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses_leases, "RENEW_SECONDS", 0.05)
    monkeypatch.setattr(responses_leases, "POLL_SECONDS", 0.02)
    engine = HeldEngine()
    async with two_replicas(tmp_path, engine) as (running, other):
        created = await create(running, background=True)
        cancelled = await other.post(f"/v1/responses/{created['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert engine.stopped.is_set()  # the generation stopped where it ran
        assert (await running.get(f"/v1/responses/{created['id']}")).json()["status"] == (
            "cancelled"
        )

        engine.stopped.clear()
        created = await create(running, background=True)
        deleted = await other.delete(f"/v1/responses/{created['id']}")
        assert deleted.status_code == 200, deleted.text
        assert engine.stopped.is_set()
        await asyncio.sleep(0.2)  # several renewals later, nothing brought it back
        for client in (running, other):
            assert (await client.get(f"/v1/responses/{created['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True, "store": False}, "background"),
        ({"background": True, "stream": True}, "stream"),
        ({"input": [{"type": "bogus"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0]"),
        ({"input": []}, "input"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [TOOL]}, "tool_choice"),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            "messages[0].tool_call_id",
        ),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"conversation": "conv_1"}, "conversation"),
    ],
)
async def test_bad_requests_are_clear_400s(
    client: AsyncTestClient[Any], fields: dict[str, Any], param: str
) -> None:
    answer = await client.post("/v1/responses", json=body(**fields))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert str(error["param"]).startswith(param), error
