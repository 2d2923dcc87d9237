"""``APP_CONTEXT_OVERFLOW``: a chat longer than the context is a 400 by default; with
``drop_oldest`` its oldest turns go (never the system prompt, never the last message, and the
tool results of a dropped call with it), and the response says how many."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.factory import create_app
from tests.unit.fakes import FakeEngine
from tests.unit.support import ADMIN, ADMIN_PASSWORD, bearer, login, settings_for

LONG = " ".join(["word"] * 12)  # the fake engine: one token a word, a context of 64


def chat(turns: int) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} {LONG}"})
        messages.append({"role": "assistant", "content": f"answer {i} {LONG}"})
    messages.append({"role": "user", "content": "the last question"})
    return messages


async def test_by_default_a_chat_too_long_for_the_context_is_a_400(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), engine=FakeEngine())
    async with AsyncTestClient(app=app) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        body = {"model": "tinyllama-1.1b", "messages": chat(4), "max_tokens": 4}
        answer = await client.post("/v1/chat/completions", json=body, headers=token)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "context_length_exceeded"


async def test_drop_oldest_keeps_the_system_prompt_and_the_last_message(tmp_path: Path) -> None:
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        for stream in (False, True):
            engine.chats.clear()
            body = {
                "model": "tinyllama-1.1b",
                "messages": chat(4),
                "max_tokens": 4,
                "stream": stream,
            }
            answer = await client.post("/v1/chat/completions", json=body, headers=token)
            assert answer.status_code == 200, answer.text
            dropped = int(answer.headers["x-context-dropped-messages"])
            sent = engine.chats[-1]  # what was generated from
            assert len(sent) == 10 - dropped
            assert sent[0].role == "system"
            assert sent[-1].content == "the last question"
            assert "question 0" not in " ".join(str(m.content) for m in sent)
            assert dropped % 2 == 0, "a user turn goes with the answer after it"

        # A chat that fits is left alone and says nothing.
        body = {"model": "tinyllama-1.1b", "messages": chat(1), "max_tokens": 4}
        answer = await client.post("/v1/chat/completions", json=body, headers=token)
        assert answer.status_code == 200
        assert "x-context-dropped-messages" not in answer.headers


async def test_an_agent_loops_current_turn_is_kept_whole(tmp_path: Path) -> None:
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    call = {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
    messages = [
        *chat(3)[:-1],
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"},
    ]
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        body = {"model": "tinyllama-1.1b", "messages": messages, "tools": [tool], "max_tokens": 4}
        answer = await client.post("/v1/chat/completions", json=body, headers=token)
        assert answer.status_code == 200, answer.text
        assert int(answer.headers["x-context-dropped-messages"]) > 0
        roles = [m.role for m in engine.chats[-1]]
        assert roles[0] == "system"
        assert roles[-3:] == ["user", "assistant", "tool"], roles  # the current turn, whole


async def test_what_cannot_be_made_to_fit_is_still_a_400(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        huge = [{"role": "user", "content": " ".join(["word"] * 100)}]
        body = {"model": "tinyllama-1.1b", "messages": huge, "max_tokens": 4}
        answer = await client.post("/v1/chat/completions", json=body, headers=token)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "context_length_exceeded"


async def test_a_chat_of_many_turns_is_cut_to_fit_in_a_few_renderings(tmp_path: Path) -> None:
    """Hundreds of turns over the context still fit (the oldest go, in quarter-context steps:
    here the fewest, as one turn is longer than a step), and finding
    how many is a bisection: the chat is rendered a handful of times, not once a turn."""
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        body = {"model": "tinyllama-1.1b", "messages": chat(300), "max_tokens": 4}
        answer = await client.post("/v1/chat/completions", json=body, headers=token)
        assert answer.status_code == 200, answer.text
        assert int(answer.headers["x-context-dropped-messages"]) > 500
    sent = engine.chats[-1]
    assert sent[0].content == "be brief"
    assert sent[-1].content == "the last question"
    words = len(" ".join(f"{m.role}: {m.content}" for m in sent).split())
    turn = len(f"user: question 1 {LONG} assistant: answer 1 {LONG}".split())
    assert words <= 60 < words + turn  # the context less max_tokens; one more turn would not fit
    assert len(engine.chats) <= 12  # log2(300) + 2 renderings to fit, and the request's own


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_anthropic_messages_and_responses_drop_their_oldest_turns_too(
    tmp_path: Path, path: str, stream: bool
) -> None:
    """As chat completions do; a stored response keeps its whole conversation."""
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    system, *messages = chat(4)
    if path == "/v1/messages":
        body = {"system": system["content"], "messages": messages, "max_tokens": 4}
    else:
        body = {"instructions": system["content"], "input": messages, "max_output_tokens": 4}
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        answer = await client.post(
            path, json={"model": "tinyllama-1.1b", "stream": stream, **body}, headers=token
        )
        assert answer.status_code == 200, answer.text
        dropped = int(answer.headers["x-context-dropped-messages"])
        sent = engine.chats[-1]
        assert len(sent) == 10 - dropped
        assert sent[0].content == "be brief"
        assert sent[-1].content == "the last question"
        if path == "/v1/responses":
            if stream:  # the id, from the first event
                first = answer.text.split("\ndata: ", 1)[1].split("\n", 1)[0]
                response_id = json.loads(first)["response"]["id"]
            else:
                response_id = answer.json()["id"]
            items = await client.get(f"/v1/responses/{response_id}/input_items", headers=token)
            assert len(items.json()["data"]) == len(messages)  # stored whole


async def post_chat(
    client: AsyncTestClient[Any], messages: list[dict[str, object]], **fields: Any
) -> tuple[int, int]:
    """(status, messages dropped) of a chat completion."""
    token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
    body = {"model": "tinyllama-1.1b", "messages": messages, "max_tokens": 4, **fields}
    answer = await client.post("/v1/chat/completions", json=body, headers=token)
    return answer.status_code, int(answer.headers.get("x-context-dropped-messages", 0))


async def test_a_growing_conversation_keeps_dropping_the_same_turns(tmp_path: Path) -> None:
    """Turns go in steps of a quarter of the context, so the kept prompt keeps its prefix (and
    the slot's cache) while the conversation grows within a step; dropping the fewest turns
    each time would shift it here (4 turns, then 5)."""
    engine = FakeEngine(context_size=256)
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    exchange: list[dict[str, object]] = [
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "next"},
    ]
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        first = await post_chat(client, chat(12))
        kept = engine.chats[-1]
        later = await post_chat(client, chat(12) + exchange * 3)
    assert first == later == (200, 10)
    assert engine.chats[-1][: len(kept) - 1] == kept[:-1]  # the same prefix


async def test_the_current_turn_keeps_what_room_it_leaves_for_the_answer(tmp_path: Path) -> None:
    """A current turn longer than the context less max_tokens (but not than the context) still
    fits once the older turns are gone: the answer gets what is left, not a 400."""
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    last: dict[str, object] = {"role": "user", "content": " ".join(["word"] * 40)}
    async with AsyncTestClient(app=create_app(settings, engine=FakeEngine())) as client:
        assert await post_chat(client, [*chat(2)[:-1], last], max_tokens=30) == (200, 4)


async def test_a_turn_holds_its_calls_results_past_a_developer_note(tmp_path: Path) -> None:
    """A developer message between a call and its result stays, and does not split the turn:
    the call and its result go together (a result without its call would be refused)."""
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    call = {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"look it up {LONG} {LONG}"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "developer", "content": "note"},
        {"role": "tool", "tool_call_id": "call_1", "content": f"found it {LONG} {LONG}"},
        {"role": "assistant", "content": f"it is there {LONG} {LONG}"},
        {"role": "user", "content": "the last question"},
    ]
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        assert await post_chat(client, messages, tools=[tool]) == (200, 4)
    roles = [m.role for m in engine.chats[-1]]
    assert roles == ["system", "system", "user"]  # (a developer message is a system one)


async def test_anthropic_tool_results_and_text_are_one_current_turn(tmp_path: Path) -> None:
    """A user message with tool results and text (Anthropic's) is the current turn whole: the
    call it answers stays with it, and so does the question that led to the call."""
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    use = {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}
    body = {
        "model": "tinyllama-1.1b",
        "max_tokens": 4,
        "system": "be brief",
        "tools": [{"name": "look", "input_schema": {"type": "object"}}],
        "messages": [
            *chat(3)[1:-1],
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result, {"type": "text", "text": "and then?"}]},
        ],
    }
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        token = bearer(await login(client, ADMIN, ADMIN_PASSWORD))
        answer = await client.post("/v1/messages", json=body, headers=token)
        assert answer.status_code == 200, answer.text
    roles = [m.role for m in engine.chats[-1]]
    assert roles[-4:] == ["user", "assistant", "tool", "user"], roles
    assert engine.chats[-1][-4].content == "look it up"


async def test_a_few_turns_go_where_the_step_cannot_be_reached(tmp_path: Path) -> None:
    """Where dropping in steps of a quarter of the context cannot get that far (a long system
    prompt), the fewest turns that leave room for the answer go, not the whole history."""
    engine = FakeEngine(context_size=256)
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")
    system: dict[str, object] = {"role": "system", "content": " ".join(["rule"] * 100)}
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        status, dropped = await post_chat(client, [system, *chat(6)[1:]], max_tokens=100)
    assert status == 200
    assert 0 < dropped < 12
    sent = engine.chats[-1]
    words = len(" ".join(f"{m.role}: {m.content}" for m in sent).split())
    assert words <= 256 - 100 < words + 30  # room for the answer; one more turn would not fit


async def test_results_answer_calls_made_in_several_messages(tmp_path: Path) -> None:
    """Tool results right before the last user message keep every call they answer, even when
    each call came in an assistant message of its own."""
    engine = FakeEngine()
    settings = settings_for(tmp_path, APP_CONTEXT_OVERFLOW="drop_oldest")

    def call(n: int) -> dict[str, object]:
        function = {"name": "look", "arguments": "{}"}
        return {
            "role": "assistant",
            "tool_calls": [{"id": f"c{n}", "type": "function", "function": function}],
        }

    messages: list[dict[str, object]] = [
        *chat(3)[:-1],
        {"role": "user", "content": "look twice"},
        call(1),
        call(2),
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "user", "content": "and?"},
    ]
    tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
    async with AsyncTestClient(app=create_app(settings, engine=engine)) as client:
        status, dropped = await post_chat(client, messages, tools=[tool])
    assert status == 200
    assert dropped > 0
    roles = [m.role for m in engine.chats[-1]]
    assert roles[-6:] == ["user", "assistant", "assistant", "tool", "tool", "user"], roles
