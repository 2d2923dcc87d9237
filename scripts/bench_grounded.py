"""The input-grounded workload of ``scripts/bench --workload grounded``: prompt lookup drafting.

Twenty fixed requests that rewrite or extract from a text in the prompt (scripts/lib/
grounded.json), as streamed chat completions at temperature 0, sent at each concurrency to the
service with drafting (the default), to the same service with ``APP_DRAFT_TOKENS=0``, and,
with ``--peer llama-server``, to llama.cpp's own server in its default configuration (which
drafts nothing), interleaved level by level in one run. Each answer ends where the model ends
it, so the servers' token counts can differ a little; tokens per second is what is compared.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import httpx
from bench import PASSWORD, Run, api_key, percentile, start_peer, start_service, timed_stream

GROUNDED = Path(__file__).resolve().parent / "lib" / "grounded.json"


def requests(tag: str) -> list[str]:
    """The 20 requests, each beginning with ``tag``: no server has computed (or kept in a
    cache) a prompt of another round, as no real request repeats one."""
    spec = json.loads(GROUNDED.read_text())
    return [
        f"({tag}.{i}) {task}\n\n{spec['texts'][name]}"
        for i, (name, task) in enumerate(spec["requests"])
    ]


async def chat(http: httpx.AsyncClient, prompt: str, max_tokens: int, run: Run) -> None:
    """One streamed chat completion; its tokens and timings go into ``run`` (a bench ``Run``)."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    await timed_stream(http, "/v1/chat/completions", body, run, _shows_text)


def _shows_text(line: str) -> bool:
    chunk = json.loads(line[6:])
    return any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", []))


async def load(
    url: str, key: str, concurrency: int, max_tokens: int, prompts: list[str]
) -> tuple[Run, float]:
    run = Run()
    no_keepalive = httpx.Limits(max_keepalive_connections=0)  # as the stream workload
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=600, limits=no_keepalive
    ) as http:
        started = time.perf_counter()

        async def worker(index: int) -> None:
            for prompt in prompts[index::concurrency]:
                await chat(http, prompt, max_tokens, run)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return run, time.perf_counter() - started


def drafted(url: str, token: str) -> tuple[float, float]:
    """The service's draft counters (drafted, accepted), from its /metrics."""
    answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    values = dict(re.findall(r"^(llm_draft_tokens\w*)_total (\S+)$", answer.text, re.M))
    return float(values["llm_draft_tokens"]), float(values["llm_draft_tokens_accepted"])


def workload(args: Namespace, levels: list[int]) -> int:
    print(
        f"model {args.model.name}, {args.threads} threads, {len(requests(''))} grounded chats "
        f"of at most {args.max_tokens} tokens at each concurrency"
    )
    names = ["drafting", "no drafting"] + (["llama-server"] if args.peer else [])
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in names}
    processes = []
    with tempfile.TemporaryDirectory() as data:
        try:
            servers: dict[str, tuple[str, str]] = {}
            for name, draft in (("drafting", "8"), ("no drafting", "0")):
                folder = Path(data) / name.replace(" ", "-")
                folder.mkdir()
                process, url = start_service(
                    args.model,
                    args.threads,
                    max(levels),
                    args.context,
                    str(folder),
                    APP_DRAFT_TOKENS=draft,
                    APP_METRICS_LISTEN="",
                )
                processes.append(process)
                servers[name] = (url, api_key(url))
            if args.peer:
                process, url = start_peer(args.model, args.threads, max(levels), args.context)
                processes.append(process)
                servers["llama-server"] = (url, "none")
            for url, key in servers.values():  # warm up: 8 tokens of one request
                asyncio.run(load(url, key, 1, 8, requests("warm-up")[:1]))
            for c in levels:  # interleaved: a drifting machine skews all alike
                for name, (url, key) in servers.items():
                    prompts = requests(f"C{c}")
                    run, elapsed = asyncio.run(load(url, key, c, args.max_tokens, prompts))
                    ttft = percentile(run.ttft, 0.5) * 1000
                    results[name][c] = (run.tokens / elapsed, ttft)
            url = servers["drafting"][0]
            token = httpx.post(
                f"{url}/token", data={"username": "admin", "password": PASSWORD}
            ).json()["access_token"]
            total, accepted = drafted(url, token)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    print("{:<14} {:>3} {:>9} {:>9}".format("server", "C", "tokens/s", "TTFT p50"))
    for name in names:
        for c, (rate, ttft) in results[name].items():
            print(f"{name:<14} {c:>3} {rate:>9.1f} {ttft:>7.0f}ms")
    share = accepted / max(total, 1)
    print(f"\ndrafted tokens: {total:.0f}, accepted: {accepted:.0f} ({share:.0%})")
    print("\nC   drafting / no drafting" + ("   drafting / llama-server" if args.peer else ""))
    for c in levels:
        mine = results["drafting"][c][0]
        line = f"{c:<3} {mine / results['no drafting'][c][0]:>22.2f}"
        if args.peer:
            line += f" {mine / results['llama-server'][c][0]:>25.2f}"
        print(line)
    return 0
