"""Throughput and latency of the service under concurrent streaming clients.

Prints, for C concurrent clients: aggregate generated tokens/s, time to first token and
inter-token latency (p50/p95), and the ratio of the aggregate to a baseline measured in this run:
the same prompts generated one after another in-process with llama-cpp-python's ``Llama`` object,
same model, same threads. Run it on an otherwise idle machine; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a day at the beach.",
    "List some facts about the moon.",
    "Write a recipe for pancakes.",
    "Explain why the sky is blue.",
    "Describe the city of Paris.",
    "Write a letter to a friend.",
]
PASSWORD = "bench-admin-password"  # noqa: S105 - a throwaway service's admin


@dataclass
class Run:
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)


def prompts(count: int) -> list[str]:
    """``count`` requests' prompts, cycling through PROMPTS."""
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(model: Path, threads: int, max_tokens: int, context: int, requests: int) -> float:
    """Tokens/s generating every prompt serially with llama-cpp-python's Llama, in-process."""
    from llama_cpp import Llama

    llama = Llama(
        str(model), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    tokens, started = 0, time.perf_counter()
    for prompt in prompts(requests):
        out = llama.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        tokens += out["usage"]["completion_tokens"]  # type: ignore[index]
    elapsed = time.perf_counter() - started
    llama.close()
    return tokens / elapsed


async def client(http: httpx.AsyncClient, prompt: str, max_tokens: int, run: Run) -> None:
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    last = None
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            # Parse only what is needed: the client shares the CPU with the service.
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            if '"usage":{' in line:
                run.tokens += json.loads(line[6:])["usage"]["completion_tokens"]
            elif '"text":""' not in line:
                if last is None:
                    run.ttft.append(now - started)
                else:
                    run.itl.append(now - last)
                last = now


async def load(
    url: str, key: str, concurrency: int, max_tokens: int, requests: int
) -> tuple[Run, float]:
    run = Run()
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        started = time.perf_counter()

        # The same requests at every concurrency, each client sending its share back to back:
        # sustained load, in which finished sequences are replaced by new ones.
        async def worker(index: int) -> None:
            for prompt in prompts(requests)[index::concurrency]:
                await client(http, prompt, max_tokens, run)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return run, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(
    model: Path, threads: int, parallel: int, context: int, data: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "APP_MODEL_PATH": str(model),
        "APP_MODEL_NAME": "bench",
        "APP_PORT": str(port),
        "APP_THREADS": str(threads),
        "APP_PARALLEL": str(parallel),
        "APP_CONTEXT_SIZE": str(context),
        "APP_DATA_DIR": data,
        "APP_ADMIN_PASSWORD": PASSWORD,
        "APP_LOG_LEVEL": "warning",
        "APP_REQUESTS_PER_MINUTE": "0",  # one client sends every request: no per-user limits
        "APP_TOKENS_PER_DAY": "0",
        "APP_CONCURRENT_PER_USER": "0",
    }
    process = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env, cwd=data)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the service did not become healthy")


def api_key(url: str) -> str:
    token = httpx.post(f"{url}/token", data={"username": "admin", "password": PASSWORD}).json()
    created = httpx.post(
        f"{url}/users/me/api-keys",
        json={"name": "bench"},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    return str(created.json()["key"])


def main() -> int:
    default_model = Path.home() / ".cache/llm-service/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=Path(os.environ.get("APP_TEST_MODEL", default_model))
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--context", type=int, default=1024)
    # 32 requests: 4 rounds per client at C=8, so that the ramp-up and the last round's tail
    # (slots emptying one by one) weigh little against the sustained rate being measured.
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    print(
        f"model {args.model.name}, {args.threads} threads, {args.requests} requests of "
        f"{args.max_tokens} tokens at each concurrency"
    )
    # Measured before and after the service runs; their mean is the baseline, so that a machine
    # whose speed drifts (shared VMs do) skews no ratio.
    before = baseline(args.model, args.threads, args.max_tokens, args.context, args.requests)
    rows: list[tuple[int, Run, float]] = []

    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, max(levels), args.context, data)
        try:
            key = api_key(url)
            asyncio.run(load(url, key, 1, 8, 1))  # warm up
            for c in levels:
                run, elapsed = asyncio.run(load(url, key, c, args.max_tokens, args.requests))
                rows.append((c, run, elapsed))
        finally:
            process.terminate()
            process.wait(timeout=60)
    after = baseline(args.model, args.threads, args.max_tokens, args.context, args.requests)
    base = (before + after) / 2
    print(
        f"baseline (llama-cpp-python Llama, serial, in-process): {base:.1f} tokens/s "
        f"(before {before:.1f}, after {after:.1f})\n"
    )
    header = ("C", "tokens/s", "ratio", "TTFT p50", "p95", "ITL p50", "p95")
    print("{:>3} {:>9} {:>6} {:>9} {:>7} {:>8} {:>7}".format(*header))
    for c, run, elapsed in rows:
        rate = run.tokens / elapsed
        ttft = [percentile(run.ttft, q) * 1000 for q in (0.5, 0.95)]
        itl = [percentile(run.itl, q) * 1000 for q in (0.5, 0.95)]
        print(
            f"{c:>3} {rate:>9.1f} {rate / base:>6.2f} {ttft[0]:>7.0f}ms {ttft[1]:>5.0f}ms "
            f"{itl[0]:>6.1f}ms {itl[1]:>5.1f}ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
