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
from collections.abc import Callable
from pathlib import Path

import httpx
from bench import (
    PASSWORD,
    Run,
    api_key,
    drive,
    percentile,
    start_peer,
    start_service,
    timed_stream,
)

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
    return await drive(
        url,
        key,
        concurrency,
        prompts,
        lambda http, prompt, run: chat(http, prompt, max_tokens, run),
    )


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


# --- how far prompt lookup can go ----------------------------------------------------------------

DRAFT = 8  # APP_DRAFT_TOKENS's default


class _Decoder:
    """The model in-process, decoding one sequence with llama.cpp directly: timed steps, and
    the greedy next token."""

    def __init__(self, model: Path, threads: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llama_cpp.Llama(
            str(model), n_ctx=2048, n_threads=threads, n_batch=512, n_ubatch=512,
            flash_attn=True, verbose=False,
        )  # fmt: skip
        self._ctx = self._llm._ctx.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(512, 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(self._vocab)

    def step(self, tokens: list[int], start: int, *, every_logit: bool) -> float:
        """Decodes ``tokens`` from position ``start`` (logits for each, or for the last only,
        as a prompt is computed); its seconds."""
        if len(tokens) > 512:
            raise ValueError(f"a step of {len(tokens)} tokens: the batch holds 512")
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = every_logit or i == len(tokens) - 1
        started = time.perf_counter()
        if self._lib.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    def forget(self, start: int) -> None:
        """The sequence's tokens from ``start`` on leave the cache."""
        self._lib.llama_memory_seq_rm(self._memory, 0, start, -1)

    def greedy(self) -> int | None:
        """The likeliest token after the last one decoded; None for an end of text."""
        import numpy as np

        logits = self._lib.llama_get_logits_ith(self._ctx, -1)
        token = int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.vocab_size,))))
        return None if self._lib.llama_vocab_is_eog(self._vocab, token) else token


def bound(args: Namespace) -> int:
    """How fast prompt lookup could make the 20 grounded requests at one stream, at best, with
    this model on this machine: each prompt's computation and each size of decode step are
    timed in-process, the greedy answers generated, and an oracle that knows how many drafted
    tokens the model keeps drafts exactly those (where a step of that many costs less per token)
    from the latest earlier occurrence of the longest matching suffix, as the service does, or,
    with hindsight, from the best of every earlier occurrence. Prompts are computed alike with
    and without drafting."""
    import statistics

    from app.inference.drafting import NGRAMS, PromptLookup, continued_from
    from app.inference.engine import ChatMessage, EngineConfig
    from app.inference.llama_engine import LlamaEngine

    async def chat_prompts() -> list[list[int]]:  # as the service renders and tokenizes them
        config = EngineConfig(context_size=2048, threads=args.threads, parallel=1)
        engine = await LlamaEngine.load(args.model, config)
        try:
            return [
                await engine.tokenize_chat([ChatMessage(role="user", content=text)])
                for text in requests("C1")  # the prompts of the grounded workload at C=1
            ]
        finally:
            await engine.close()

    prompts = asyncio.run(chat_prompts())
    model = _Decoder(args.model, args.threads)
    prefill, answers = 0.0, []
    for prompt in prompts:
        times = []
        for _ in range(3):
            model.forget(0)
            times.append(model.step(prompt, 0, every_logit=False))
        prefill += statistics.median(times)
        answer: list[int] = []
        while len(answer) < args.max_tokens and (token := model.greedy()) is not None:
            answer.append(token)
            model.step([token], len(prompt) + len(answer) - 1, every_logit=False)
        answers.append(answer)
    model.forget(0)
    model.step(prompts[0], 0, every_logit=False)
    cost: dict[
        int, float
    ] = {}  # ms of a step of n tokens, each with its logits (as a draft is checked)
    for n in range(1, DRAFT + 2):
        times = []
        for _ in range(25):
            times.append(model.step(prompts[0][:n], len(prompts[0]), every_logit=True))
            model.forget(len(prompts[0]))
        cost[n] = statistics.median(times) * 1000

    def kept(tokens: list[int], end: int, answer: list[int], at: int) -> int:
        draft = continued_from(tokens, end, min(DRAFT, len(answer) - at - 1))
        return next((i for i, t in enumerate(draft) if t != answer[at + i]), len(draft))

    def latest(tokens: list[int], lookup: PromptLookup, answer: list[int], at: int) -> int:
        draft, _ = lookup.propose(len(answer) - at - 1)
        return next((i for i, t in enumerate(draft) if t != answer[at + i]), len(draft))

    def best(tokens: list[int], lookup: PromptLookup, answer: list[int], at: int) -> int:
        for n in NGRAMS:  # the longest suffix that occurred before, as the service looks up
            ends = [e for e in range(n, len(tokens)) if tokens[e - n : e] == tokens[-n:]]
            if len(tokens) > n and ends:
                return max(kept(tokens, end, answer, at) for end in ends)
        return 0

    Keeps = Callable[[list[int], PromptLookup, list[int], int], int]

    def decode_ms(keeps: Keeps | None) -> float:
        total = 0.0
        for prompt, answer in zip(prompts, answers, strict=True):
            lookup = PromptLookup.of(prompt, DRAFT)
            at = 0
            while at < len(answer):
                can = keeps(lookup.tokens, lookup, answer, at) if keeps else 0
                drafted = max(range(can + 1), key=lambda k: (k + 1) / cost[k + 1])
                total += cost[drafted + 1]
                for token in answer[at : at + drafted + 1]:
                    lookup.append(token)
                at += drafted + 1
        return total

    plain = decode_ms(None)
    prompt_ms = prefill * 1000
    steps = ", ".join(f"{n}: {ms:.1f}" for n, ms in cost.items())
    print(f"model {args.model.name}, {args.threads} threads; decode step ms by tokens: {steps}")
    print(
        f"prompts: {sum(map(len, prompts))} tokens in {prompt_ms / 1000:.2f} s; answers: "
        f"{sum(map(len, answers))} tokens, {plain / 1000:.2f} s without drafting"
    )
    for name, keeps in (("latest occurrence (as the service)", latest), ("best occurrence", best)):
        ms = decode_ms(keeps)
        print(
            f"oracle, {name}: decode {plain / ms:.2f}x, "
            f"with the prompts {(plain + prompt_ms) / (ms + prompt_ms):.2f}x faster than none"
        )
    return 0
