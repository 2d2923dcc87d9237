"""Sustained load: every slot held by streaming clients while others log in and list models.

Reports errors (there must be none), generated tokens/s, request counts and the service's
memory growth (RSS at the start and the end of the run). Not a test: it runs for minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
from bench import PASSWORD, api_key, start_service

PROMPTS = ["Tell me a story about a fox.", "Explain how rain forms.", "Describe a busy market."]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(url: str, key: str, streams: int, others: int, seconds: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}

    async def streamer(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
            while time.monotonic() < deadline:
                body = {
                    "model": "bench",
                    "prompt": PROMPTS[index % len(PROMPTS)],
                    "max_tokens": 128,
                    "ignore_eos": True,  # the slot stays busy for all 128 tokens
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                try:
                    async with http.stream("POST", "/v1/completions", json=body) as response:
                        if response.status_code != 200:
                            counts[f"error: stream {response.status_code}"] += 1
                            continue
                        async for line in response.aiter_lines():
                            if line.startswith('data: {"error"'):
                                counts["error: in-stream"] += 1
                            elif '"usage":{' in line:
                                counts["tokens"] += int(
                                    line.split('"completion_tokens":')[1].split(",")[0]
                                )
                    counts["streams"] += 1
                except httpx.HTTPError as exc:
                    counts[f"error: {type(exc).__name__}"] += 1

    async def visitor() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    token = await http.post(
                        "/token", data={"username": "admin", "password": PASSWORD}
                    )
                    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
                    models = await http.get("/v1/models", headers=bearer)
                    ok = token.status_code == 200 and models.status_code == 200
                    counts["logins and listings" if ok else "error: login or list"] += 1
                except httpx.HTTPError as exc:
                    counts[f"error: {type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)

    await asyncio.gather(
        *(streamer(i) for i in range(streams)), *(visitor() for _ in range(others))
    )
    return counts


def main() -> int:
    default_model = Path.home() / ".cache/llm-service/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=Path(os.environ.get("APP_TEST_MODEL", default_model))
    )
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--parallel", type=int, default=4, help="slots; one stream each")
    parser.add_argument("--others", type=int, default=4, help="clients logging in and listing")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, args.parallel, 1024, data)
        try:
            key = api_key(url)
            before = rss_mb(process.pid)
            started = time.monotonic()
            counts = asyncio.run(run(url, key, args.parallel, args.others, args.seconds))
            elapsed = time.monotonic() - started
            after = rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=60)
    errors = {k: v for k, v in counts.items() if k.startswith("error")}
    print(f"{elapsed:.0f} s, {args.parallel} streaming clients, {args.others} others")
    print(f"  streams finished:     {counts['streams']}")
    print(f"  logins and listings:  {counts['logins and listings']}")
    print(f"  generated tokens/s:   {counts['tokens'] / elapsed:.1f}")
    print(f"  service RSS:          {before:.0f} MB -> {after:.0f} MB ({after - before:+.0f} MB)")
    print(f"  errors:               {sum(errors.values())} {errors or ''}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
