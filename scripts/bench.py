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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from app.inference.tool_formats import GENERIC, ToolSpec

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
T = TypeVar("T")
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
    await timed_stream(http, "/v1/completions", body, run, lambda line: '"text":""' not in line)


async def timed_stream(
    http: httpx.AsyncClient,
    path: str,
    body: dict[str, object],
    run: Run,
    shows_text: Callable[[str], bool],
) -> None:
    """Streams one request; its tokens (from the usage chunk), time to first token and the gaps
    between chunks that ``shows_text`` go into ``run``."""
    started = time.perf_counter()
    last = None
    async with http.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            # Parse only what is needed: the client shares the CPU with the service.
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            if '"usage":{' in line:
                run.tokens += json.loads(line[6:])["usage"]["completion_tokens"]
            elif shows_text(line):
                if last is None:
                    run.ttft.append(now - started)
                else:
                    run.itl.append(now - last)
                last = now


async def drive(
    url: str,
    key: str,
    concurrency: int,
    items: list[T],
    send: Callable[[httpx.AsyncClient, T, Run], Awaitable[None]],
    *,
    keepalive: bool = False,
) -> tuple[Run, float]:
    """``concurrency`` clients sending ``items`` between them, each its share back to back
    (``send`` makes one request and records it in the run): sustained load, in which finished
    sequences are replaced by new ones. The run and its seconds."""
    run = Run()
    headers = {"Authorization": f"Bearer {key}"}
    # Without keep-alive, a connection per request: llama-server sometimes closes a kept-alive
    # connection without saying so, and the next request on it fails before any token (the
    # same for both servers).
    limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as http:
        started = time.perf_counter()

        async def worker(index: int) -> None:
            for item in items[index::concurrency]:
                await send(http, item, run)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return run, time.perf_counter() - started


async def load(
    url: str, key: str, concurrency: int, max_tokens: int, requests: int
) -> tuple[Run, float]:
    """The stream workload: the same completions at every concurrency."""
    return await drive(
        url,
        key,
        concurrency,
        prompts(requests),
        lambda http, prompt, run: client(http, prompt, max_tokens, run),
    )


# --- the tool-call workload ----------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "file_report",
        "description": "Files a short report about a topic.",
        "parameters": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "maxLength": 60},
                "summary": {"type": "string", "maxLength": 600},
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 20},
                    "maxItems": 5,
                },
                "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            },
            "required": ["topic", "summary", "tags", "priority"],
            "additionalProperties": False,
        },
    },
}


TOOL_NOTE = GENERIC.note(
    [
        ToolSpec(
            name=TOOL["function"]["name"],  # type: ignore[index]
            description=TOOL["function"]["description"],  # type: ignore[index]
            parameters=TOOL["function"]["parameters"],  # type: ignore[index]
            strict=False,
        )
    ],
    required=True,
)


async def chat_client(
    http: httpx.AsyncClient, prompt: str, max_tokens: int, tools: bool, run: Run
) -> None:
    body: dict[str, object] = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if tools:
        body |= {"tools": [TOOL], "tool_choice": "required"}
    else:
        # The same prompt as the calls' (the note that describes the tool), without the
        # grammar: the difference is what the grammar costs.
        body["messages"] = [{"role": "system", "content": TOOL_NOTE}, *body["messages"]]  # type: ignore[misc]
        body["ignore_eos"] = True  # as long as the constrained answers, on average
    response = await http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    answer = response.json()
    run.tokens += answer["usage"]["completion_tokens"]
    choice = answer["choices"][0]
    if tools and choice["finish_reason"] == "tool_calls":  # else max_tokens cut the call
        for call in choice["message"]["tool_calls"]:
            json.loads(call["function"]["arguments"])  # a constrained call always parses


async def chat_load(
    url: str, key: str, concurrency: int, requests: int, tools: bool, max_tokens: int
) -> tuple[Run, float]:
    return await drive(
        url,
        key,
        concurrency,
        [f"File a report: {prompt}" for prompt in prompts(requests)],
        lambda http, prompt, run: chat_client(http, prompt, max_tokens, tools, run),
        keepalive=True,
    )


def tools_workload(args: argparse.Namespace, levels: list[int]) -> int:
    """Tool calls held to their schema by the grammar against free text of the same length
    from the same prompt (the tool's description included), same run."""
    print(f"model {args.model.name}, {args.threads} threads, {args.requests} requests per row")
    print("   C  free tokens/s  tool-call tokens/s  ratio")
    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, max(levels), args.context, data)
        try:
            key = api_key(url)
            asyncio.run(chat_load(url, key, 1, 1, True, 400))  # warm up
            for c in levels:
                calls, calls_time = asyncio.run(chat_load(url, key, c, args.requests, True, 400))
                length = max(calls.tokens // args.requests, 1)
                free, free_time = asyncio.run(chat_load(url, key, c, args.requests, False, length))
                constrained, unconstrained = calls.tokens / calls_time, free.tokens / free_time
                print(
                    f"{c:>4} {unconstrained:>14.1f} {constrained:>19.1f} "
                    f"{constrained / unconstrained:>6.2f}"
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
    return 0


# --- the follow-up workload --------------------------------------------------------------------

WORDS = [
    "river",
    "mountain",
    "harbour",
    "lantern",
    "orchard",
    "meadow",
    "compass",
    "signal",
    "archive",
    "voyage",
    "ember",
    "quartz",
    "falcon",
    "willow",
    "granite",
    "beacon",
    "tundra",
    "canyon",
    "glacier",
    "cobalt",
    "saffron",
    "velvet",
    "marble",
    "thunder",
    "prairie",
    "citadel",
    "lagoon",
    "summit",
    "monsoon",
    "ledger",
]


def document(seed: int, words: int) -> str:
    """A text of ``words`` words, different for each seed (no prefix shared with another)."""
    picked = [WORDS[(seed * 7919 + i * 104729 + i * i) % len(WORDS)] for i in range(words)]
    return f"Document {seed}. " + " ".join(picked)


async def first_token_time(http: httpx.AsyncClient, body: dict[str, object]) -> tuple[float, str]:
    """Seconds to the first ``response.output_text.delta`` of a streamed response, and its id."""
    started = time.perf_counter()
    first = None
    response_id = ""
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.created":
                response_id = event["response"]["id"]
            if event["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - started
    return (first if first is not None else float("nan")), response_id


async def follow_ups(url: str, key: str, rounds: int, words: int) -> list[tuple[float, float, int]]:
    """(cold, warm, prompt tokens) per round: a follow-up through previous_response_id against
    the same conversation sent whole to a cache that has never seen it."""
    headers = {"Authorization": f"Bearer {key}"}
    question = "In one sentence: which word comes first in the document?"
    results = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        for r in range(rounds):
            opening = {"model": "bench", "max_output_tokens": 16, "temperature": 0}
            # Warm: a stored turn on one document, then its follow-up.
            created = await http.post(
                "/v1/responses", json={**opening, "input": document(2 * r, words)}
            )
            created.raise_for_status()
            warm, _ = await first_token_time(
                http,
                {**opening, "previous_response_id": created.json()["id"], "input": question},
            )
            # Cold: the same shape of conversation (another document, never seen), sent whole.
            turn = await http.post(
                "/v1/responses",
                json={**opening, "input": document(2 * r + 1, words), "store": False},
            )
            turn.raise_for_status()
            history = [
                {"role": "user", "content": document(2 * r + 1, words)},
                *turn.json()["output"],
                {"role": "user", "content": question},
            ]
            # The first turn just ran on this document: evict it by prefilling another.
            await http.post(
                "/v1/responses",
                json={**opening, "input": document(10_000 + r, words), "store": False},
            )
            cold, cold_id = await first_token_time(
                http, {**opening, "input": history, "store": True}
            )
            tokens = (await http.get(f"/v1/responses/{cold_id}")).json()["usage"]["input_tokens"]
            results.append((cold, warm, tokens))
    return results


def followup_workload(args: argparse.Namespace) -> int:
    """Time to first token of a follow-up turn through previous_response_id against the same
    request sent cold, same run."""
    rounds, words = 5, 1400
    print(f"model {args.model.name}, {args.threads} threads, {rounds} rounds, one slot")
    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, 1, max(args.context, 4096), data)
        try:
            key = api_key(url)
            results = asyncio.run(follow_ups(url, key, rounds, words))
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(" round  prompt tokens  cold TTFT s  follow-up TTFT s  ratio")
    for i, (cold, warm, tokens) in enumerate(results):
        print(f"{i:>6} {tokens:>14} {cold:>12.3f} {warm:>17.3f} {warm / cold:>6.2f}")
    colds = [c for c, _, _ in results]
    warms = [w for _, w, _ in results]
    print(
        f"median: cold {percentile(colds, 0.5):.3f} s, follow-up {percentile(warms, 0.5):.3f} s, "
        f"ratio {percentile(warms, 0.5) / percentile(colds, 0.5):.2f} (target at most 0.25)"
    )
    return 0


# --- the embeddings workload --------------------------------------------------------------------


def embedding_baseline(model: Path, threads: int, passages: list[str]) -> tuple[float, list[Any]]:
    """Inputs/s embedding each passage with its own call of llama-cpp-python's
    ``Llama(embedding=True)``, in-process, and the vectors (normalised)."""
    from llama_cpp import Llama

    llm = Llama(str(model), embedding=True, n_threads=threads, verbose=False)
    llm.embed(passages[0], normalize=True)  # warm up
    started = time.perf_counter()
    vectors = [llm.embed(p, normalize=True) for p in passages]
    elapsed = time.perf_counter() - started
    llm.close()
    return len(passages) / elapsed, vectors


async def embed_all(url: str, key: str, passages: list[str], batch: int) -> tuple[float, list[Any]]:
    """Inputs/s embedding the passages through the service, ``batch`` a request, one request
    after another, and the vectors."""
    headers = {"Authorization": f"Bearer {key}"}
    vectors: list[Any] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        warm = await http.post("/v1/embeddings", json={"model": "bench", "input": passages[:batch]})
        warm.raise_for_status()
        started = time.perf_counter()
        for i in range(0, len(passages), batch):
            answer = await http.post(
                "/v1/embeddings",
                json={
                    "model": "bench",
                    "input": passages[i : i + batch],
                    "encoding_format": "float",
                },
            )
            answer.raise_for_status()
            vectors += [item["embedding"] for item in answer.json()["data"]]
        elapsed = time.perf_counter() - started
    return len(passages) / elapsed, vectors


def embeddings_workload(args: argparse.Namespace) -> int:
    """Batched embeddings through the service against one call a passage, same run."""
    import numpy as np

    model = args.embedding_model
    passages = [document(i, 45) for i in range(256)]
    print(f"model {model.name}, {args.threads} threads, 256 passages, batches of 32")
    base, expected = embedding_baseline(model, args.threads, passages)
    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(model, args.threads, 1, 512, data)
        try:
            served, vectors = asyncio.run(embed_all(url, api_key(url), passages, 32))
        finally:
            process.terminate()
            process.wait(timeout=60)
    cosines = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(vectors, expected, strict=True)
    ]
    print(f"baseline (Llama(embedding=True), one call a passage): {base:.1f} inputs/s")
    print(
        f"service (/v1/embeddings, 32 a request): {served:.1f} inputs/s, ratio {served / base:.2f}"
    )
    print(f"cosine to the baseline's vectors: min {min(cosines):.6f} (must be above 0.999)")
    return 0 if min(cosines) > 0.999 else 1


def kv_workload(args: argparse.Namespace, levels: list[int]) -> int:
    """Each APP_KV_CACHE_TYPE: KV memory per slot, mean log-probability of the reference text
    (tests/integration/test_kv_cache.py), and the stream load's tokens/s at the highest
    concurrency, the types loaded in turn."""
    from app.inference.engine import EngineConfig
    from app.inference.quality import measure
    from tests.integration.test_kv_cache import REFERENCE

    c = max(levels)
    kinds: tuple[Literal["f16", "q8_0", "q4_0"], ...] = ("f16", "q8_0", "q4_0")
    print(
        f"model {args.model.name}, {args.threads} threads, context {args.context} a slot, "
        f"{args.requests} requests of {args.max_tokens} tokens at C={c}"
    )
    quality = {
        kind: measure(
            args.model,
            EngineConfig(context_size=args.context, threads=args.threads, kv_cache_type=kind),
            REFERENCE,
        )
        for kind in kinds
    }
    rates: dict[str, float] = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory() as data:
            process, url = start_service(
                args.model, args.threads, c, args.context, data, APP_KV_CACHE_TYPE=kind
            )
            try:
                key = api_key(url)
                asyncio.run(load(url, key, 1, 8, 1))  # warm up
                run, elapsed = asyncio.run(load(url, key, c, args.max_tokens, args.requests))
                rates[kind] = run.tokens / elapsed
            finally:
                process.terminate()
                process.wait(timeout=60)
    print(f"{'type':<6} {'KV MiB/slot':>11} {'mean logprob':>13} {'vs f16':>8} {'tokens/s':>9}")
    base = quality["f16"].mean_logprob
    for kind in kinds:
        m = quality[kind]
        slot = m.kv_bytes_per_token * args.context / 2**20
        change = (m.mean_logprob - base) / abs(base) * 100
        print(
            f"{kind:<6} {slot:>11.1f} {m.mean_logprob:>13.4f} {change:>+7.2f}% {rates[kind]:>9.1f}"
        )
    return 0


def row(c: int, run: Run, elapsed: float, base: float) -> str:
    """One concurrency level's figures, as printed."""
    rate = run.tokens / elapsed
    ttft = [percentile(run.ttft, q) * 1000 for q in (0.5, 0.95)]
    itl = [percentile(run.itl, q) * 1000 for q in (0.5, 0.95)]
    return (
        f"{c:>3} {rate:>9.1f} {rate / base:>6.2f} {ttft[0]:>7.0f}ms {ttft[1]:>5.0f}ms "
        f"{itl[0]:>6.1f}ms {itl[1]:>5.1f}ms"
    )


def shared_workload(args: argparse.Namespace, levels: list[int]) -> int:
    """The same streaming load on SQLite + in-memory limits and on PostgreSQL + Valkey, both
    served at once and loaded in turn (twice each), with every limit switched on (set too high
    to trip) so that each request's API-key lookup and limit checks go through the stores."""
    from tests.realservers import find_binary, find_postgres_bindir, run_postgres, run_redis

    bindir = find_postgres_bindir()
    redis_binary = find_binary("REALSERVERS_REDIS_SERVER", "valkey-server", "redis-server")
    if bindir is None or redis_binary is None:
        raise SystemExit("needs Debian's postgresql and redis-server (scripts/test installs them)")
    c = max(levels)
    limits = {
        "APP_REQUESTS_PER_MINUTE": "100000",
        "APP_TOKENS_PER_DAY": "100000000",
        "APP_CONCURRENT_PER_USER": str(c),
    }
    print(
        f"model {args.model.name}, {args.threads} threads, {args.requests} requests of "
        f"{args.max_tokens} tokens at C={c}, each store twice, in turn"
    )
    rates: dict[str, list[float]] = {}
    ttfts: dict[str, list[float]] = {}
    with (
        # Durable, like the SQLite side (synchronous=FULL): a committed row survives a crash.
        run_postgres(bindir, durable=True) as postgres,
        run_redis(redis_binary) as redis,
        tempfile.TemporaryDirectory() as data,
    ):
        setups = {
            "sqlite + memory": {},
            "postgresql + valkey": {
                "APP_DATABASE_URL": postgres.url(),
                "APP_REDIS_URL": redis.url,
            },
        }
        services = {}
        try:
            for name, extra in setups.items():
                folder = Path(data) / name.split()[0]
                folder.mkdir()
                process, url = start_service(
                    args.model, args.threads, c, args.context, str(folder), **limits, **extra
                )
                services[name] = (process, url, api_key(url))
                asyncio.run(load(url, services[name][2], 1, 8, 1))  # warm up
            for _ in range(2):
                for name, (_, url, key) in services.items():
                    run, elapsed = asyncio.run(load(url, key, c, args.max_tokens, args.requests))
                    rates.setdefault(name, []).append(run.tokens / elapsed)
                    ttfts.setdefault(name, []).append(percentile(run.ttft, 0.5) * 1000)
        finally:
            for process, _, _ in services.values():
                process.terminate()
                process.wait(timeout=60)
    print("{:<20} {:>9} {:>9} {:>10}".format("stores", "tokens/s", "(runs)", "TTFT p50"))
    for name, values in rates.items():
        runs = "/".join(f"{v:.0f}" for v in values)
        ttft = sum(ttfts[name]) / len(ttfts[name])
        print(f"{name:<20} {sum(values) / len(values):>9.1f} {runs:>9} {ttft:>8.0f}ms")
    local, shared = (sum(rates[name]) / len(rates[name]) for name in setups)
    ratio = shared / local
    print(f"\npostgresql + valkey / sqlite + memory: {ratio:.3f} (target: at least 0.95)")
    return 0 if ratio >= 0.95 else 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(
    model: Path, threads: int, parallel: int, context: int, data: str, **extra: str
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
        **extra,
    }
    process = subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env, cwd=data)
    return process, healthy(process, f"http://127.0.0.1:{port}", "the service")


def healthy(process: subprocess.Popen[bytes], url: str, what: str) -> str:
    """``url``, once its /health answers 200 (within a minute); else the process is killed."""
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{what} did not become healthy")


def start_peer(
    model: Path, threads: int, parallel: int, context: int
) -> tuple[subprocess.Popen[bytes], str]:
    """llama.cpp's own llama-server on the same GGUF, built from the same source with the same
    flags (scripts/lib/build-llama-server.sh), configured as the service runs its engine: one
    KV stream per slot of ``context`` tokens, the same batch sizes and threads."""
    root = Path(__file__).resolve().parent
    built = subprocess.run(
        ["bash", str(root / "lib" / "build-llama-server.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    binary = Path(built.stdout.strip().splitlines()[-1]) / "llama-server"
    port = free_port()
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-np", str(parallel), "-c", str(context * parallel), "--no-kv-unified"]
    argv += ["-t", str(threads), "-tb", str(threads), "-b", "512", "-ub", "512", "-fa", "auto"]
    argv += ["--no-webui"]  # prompt caching stays on: the service reuses cached prefixes too
    env = {**os.environ, "GOMP_SPINCOUNT": "30000"}  # as python -m app serve sets it
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, healthy(process, f"http://127.0.0.1:{port}", "llama-server")


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
    parser.add_argument(
        "--embedding-model",
        type=Path,
        default=Path(
            os.environ.get(
                "APP_TEST_EMBEDDING_MODEL",
                Path.home() / ".cache/llm-service/models/all-MiniLM-L6-v2-f16.gguf",
            )
        ),
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--max-tokens", type=int, help="tokens per request at most (128; grounded: 256)"
    )
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--context", type=int, default=1024)
    # 32 requests: 4 rounds per client at C=8, so that the ramp-up and the last round's tail
    # (slots emptying one by one) weigh little against the sustained rate being measured.
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument(
        "--workload",
        choices=[
            "stream",
            "tools",
            "followup",
            "embeddings",
            "shared",
            "kv",
            "grounded",
            "lookup-bound",
        ],
        default="stream",
        help="stream: completions against the in-process baseline; tools: grammar-constrained "
        "tool calls against free text; followup: a /v1/responses follow-up through "
        "previous_response_id against the same conversation sent cold; embeddings: batched "
        "/v1/embeddings against one Llama(embedding=True) call a passage; shared: the stream load "
        "at the highest concurrency on PostgreSQL + Valkey against SQLite + memory; kv: memory, "
        "quality and speed of each APP_KV_CACHE_TYPE; grounded: 20 chats that rewrite or extract "
        "from their prompt, with prompt lookup drafting, without it, and (--peer) on llama-server; "
        "lookup-bound: the most prompt lookup could win on those 20, timed in-process",
    )
    parser.add_argument(
        "--peer",
        choices=["llama-server"],
        help="also run the stream workload against llama.cpp's own llama-server, built once "
        "from the pinned llama-cpp-python's vendored llama.cpp with the same flags, interleaved "
        "level by level with ours, and print ours / theirs",
    )
    args = parser.parse_args()
    args.max_tokens = args.max_tokens or (
        256 if args.workload in ("grounded", "lookup-bound") else 128
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.workload == "tools":
        return tools_workload(args, levels)
    if args.workload == "followup":
        return followup_workload(args)
    if args.workload == "embeddings":
        return embeddings_workload(args)
    if args.workload == "shared":
        return shared_workload(args, levels)
    if args.workload == "kv":
        return kv_workload(args, levels)
    if args.workload == "grounded":
        import bench_grounded

        return bench_grounded.workload(args, levels)
    if args.workload == "lookup-bound":
        import bench_grounded

        return bench_grounded.bound(args)

    print(
        f"model {args.model.name}, {args.threads} threads, {args.requests} requests of "
        f"{args.max_tokens} tokens at each concurrency"
    )
    # Measured before and after the service runs; their mean is the baseline, so that a machine
    # whose speed drifts (shared VMs do) skews no ratio.
    before = baseline(args.model, args.threads, args.max_tokens, args.context, args.requests)
    rows: list[tuple[int, Run, float]] = []

    peer_rows: list[tuple[int, Run, float]] = []
    with tempfile.TemporaryDirectory() as data:
        process, url = start_service(args.model, args.threads, max(levels), args.context, data)
        peer = None
        try:
            key = api_key(url)
            asyncio.run(load(url, key, 1, 8, 1))  # warm up
            if args.peer:
                peer, peer_url = start_peer(args.model, args.threads, max(levels), args.context)
                asyncio.run(load(peer_url, "none", 1, 8, 1))
            for c in levels:  # interleaved: a drifting machine skews both alike
                run, elapsed = asyncio.run(load(url, key, c, args.max_tokens, args.requests))
                rows.append((c, run, elapsed))
                if peer is not None:
                    run, elapsed = asyncio.run(
                        load(peer_url, "none", c, args.max_tokens, args.requests)
                    )
                    peer_rows.append((c, run, elapsed))
        finally:
            for running in (process, peer):
                if running is not None:
                    running.terminate()
                    running.wait(timeout=60)
    after = baseline(args.model, args.threads, args.max_tokens, args.context, args.requests)
    base = (before + after) / 2
    print(
        f"baseline (llama-cpp-python Llama, serial, in-process): {base:.1f} tokens/s "
        f"(before {before:.1f}, after {after:.1f})\n"
    )
    header = ("C", "tokens/s", "ratio", "TTFT p50", "p95", "ITL p50", "p95")
    print("{:>3} {:>9} {:>6} {:>9} {:>7} {:>8} {:>7}".format(*header))
    for c, run, elapsed in rows:
        print(row(c, run, elapsed, base))
    if peer_rows:
        print(
            "\nllama-server (same GGUF, build flags, slots, threads; ratio to the same baseline):"
        )
        for c, run, elapsed in peer_rows:
            print(row(c, run, elapsed, base))
        print("\nours / llama-server:")
        print("{:>3} {:>9} {:>14}".format("C", "tokens/s", "TTFT p50 (ms)"))
        for (c, ours, ours_s), (_, theirs, theirs_s) in zip(rows, peer_rows, strict=True):
            ratio = (ours.tokens / ours_s) / (theirs.tokens / theirs_s)
            ours_ttft, their_ttft = (percentile(r.ttft, 0.5) * 1000 for r in (ours, theirs))
            ttft = f"{ours_ttft:.0f} vs {their_ttft:.0f}"
            print(f"{c:>3} {ratio:>9.2f} {ttft:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
