"""Tool-calling conformance: how often calls parse and validate, per tool_choice, streamed or
not, with parallel calls on or off, over 50 varied prompts each (the README's table).

Starts the service on the test model (as scripts/bench does) and prints one row per
tool_choice: for `required` and a named function, the share of replies whose calls all parse and
validate against their schema (the grammar makes it 100%); for `auto`, how often the model chose
to call (and that those calls were valid); for `none`, the share with no call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from bench import api_key, start_service

CITIES = ["Paris", "Oslo", "Lima", "Tokyo", "Cairo", "Quito", "Perth", "Hanoi", "Dakar", "Bern"]
ZONES = ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/Lima", "Africa/Cairo"]
TEMPLATES = [
    "What is the weather in {city}?",
    "Is it raining in {city} right now?",
    "Tell me the temperature in {city} in fahrenheit.",
    "What time is it in {zone}?",
    "I am flying to {city} tomorrow; what should I pack?",
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 40},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time now in a timezone.",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "maxLength": 40}},
                "required": ["timezone"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CHOICES: dict[str, Any] = {
    "auto": "auto",
    "required": "required",
    "named": {"type": "function", "function": {"name": "get_weather"}},
    "none": "none",
}


def prompts(count: int) -> list[str]:
    return [
        TEMPLATES[i % len(TEMPLATES)].format(city=CITIES[i % len(CITIES)], zone=ZONES[i % 5])
        for i in range(count)
    ]


async def ask(
    http: httpx.AsyncClient, prompt: str, seed: int, choice: Any, stream: bool, parallel: bool
) -> tuple[list[tuple[str, str]], str | None]:
    """The reply's calls (name, arguments) and finish reason."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "tools": TOOLS,
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
        "max_tokens": 400,
        "temperature": 0.7,
        "seed": seed,
        "stream": stream,
    }
    if not stream:
        reply = (await http.post("/v1/chat/completions", json=body)).json()["choices"][0]
        calls = reply["message"].get("tool_calls") or []
        return [(c["function"]["name"], c["function"]["arguments"]) for c in calls], reply[
            "finish_reason"
        ]
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if not choices:
                continue
            for call in choices[0]["delta"].get("tool_calls") or []:
                function = call["function"]
                if "name" in function:
                    names[call["index"]] = function["name"]
                arguments[call["index"]] = arguments.get(call["index"], "") + function.get(
                    "arguments", ""
                )
            finish = choices[0].get("finish_reason") or finish
    return [(names[i], arguments.get(i, "")) for i in sorted(names)], finish


def valid(calls: list[tuple[str, str]], allowed: set[str]) -> bool:
    try:
        for name, arguments in calls:
            if name not in allowed:
                return False
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def cell(url: str, key: str, choice: str, stream: bool, parallel: bool, n: int) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    allowed = {"get_weather"} if choice == "named" else set(SCHEMAS)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        gate = asyncio.Semaphore(4)

        async def one(i: int, prompt: str) -> tuple[list[tuple[str, str]], str | None]:
            async with gate:
                return await ask(http, prompt, i, CHOICES[choice], stream, parallel)

        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n))))
    if choice == "none":
        return f"{sum(not calls for calls, _ in results) / n:.0%} no call"
    if choice == "auto":
        called = [calls for calls, finish in results if calls and finish == "tool_calls"]
        ok = sum(valid(c, allowed) for c in called)
        return f"{len(called) / n:.0%} called, {ok}/{len(called)} valid"
    good = 0
    for calls, finish in results:
        if finish == "tool_calls" and calls and valid(calls, allowed):
            good += 1
        else:
            print(
                f"  {choice} stream={stream} parallel={parallel}: {finish} {calls}", file=sys.stderr
            )
    return f"{good / n:.0%} valid"


def main() -> int:
    default_model = Path.home() / ".cache/llm-service/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=Path(os.environ.get("APP_TEST_MODEL", default_model))
    )
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--choices", nargs="*", choices=list(CHOICES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    columns = [(False, True), (False, False), (True, True), (True, False)]
    print(f"model {args.model.name}, {args.prompts} prompts a cell")
    heads = ["plain, parallel", "plain, one call", "streamed, parallel", "streamed, one call"]
    print("| tool_choice | " + " | ".join(heads) + " |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, 4, 1024, data)
        try:
            key = api_key(url)
            for choice in args.choices or CHOICES:
                cells = [
                    asyncio.run(cell(url, key, choice, stream, parallel, args.prompts))
                    for stream, parallel in columns
                ]
                print(f"| `{choice}` | " + " | ".join(cells) + " |", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
