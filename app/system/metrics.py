"""Prometheus metrics, named in the spirit of llama.cpp's server (``llamacpp:*``) under ``llm_``.

Counters and histograms are fed as requests finish; the gauges of the engines' load (busy slots,
requests running and waiting) are read from the model host at each scrape. Each app has its own
registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import get
from litestar.di import NamedDependency
from litestar.params import SkipValidation
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.accounts.auth import admin_only
from app.error_responses import error_responses
from app.inference.engine import EngineStats

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)


class Metrics:
    """The service's metrics, in a registry of their own."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.prompt_tokens = Counter(
            "llm_prompt_tokens",
            "Prompt tokens processed.",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "llm_tokens_predicted",
            "Tokens generated.",
            ["model"],
            registry=self.registry,
        )
        self.requests = Counter(
            "llm_requests",
            "Generation requests finished, by outcome (finish reason, or the error's code).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.requests_processing = Gauge(
            "llm_requests_processing",
            "Generation requests in progress: waiting for a slot, or generating.",
            registry=self.registry,
        )
        self.queue_rejections = Counter(
            "llm_queue_rejections",
            "Requests refused with 429 because the queue was full or the wait too long.",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Seconds from receiving a generation request to its first token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_token = Histogram(
            "llm_time_per_output_token_seconds",
            "Mean seconds between generated tokens after the first, per request.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "llm_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "llm_http_request_duration_seconds",
            "Seconds from receiving an HTTP request to the end of its response.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embedded_tokens = Counter(
            "llm_embedded_tokens",
            "Input tokens embedded (POST /v1/embeddings).",
            ["model"],
            registry=self.registry,
        )
        self.embedding_duration = Histogram(
            "llm_embedding_request_duration_seconds",
            "Seconds to embed one request's inputs.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.usage_write_failures = Counter(
            "llm_usage_write_failures",
            "Times the usage ledger could not be written (its rows are held in memory and "
            "written later).",
            registry=self.registry,
        )
        self.response_store_failures = Counter(
            "llm_response_store_failures",
            "Times a stored response (/v1/responses, store: true) could not be written (it is "
            "held in memory and written later).",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats))

    def embedding(self, model: str, tokens: int, duration: float) -> None:
        """One embeddings request finished."""
        self.embedded_tokens.labels(model).inc(tokens)
        self.embedding_duration.labels(model).observe(duration)

    def generation(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        ttft: float | None,
        duration: float,
        outcome: str,
    ) -> None:
        """One generation request finished (or failed after it began)."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(completion_tokens)
        self.requests.labels(model, outcome).inc()
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
            if completion_tokens > 1:
                per_token = (duration - ttft) / (completion_tokens - 1)
                self.time_per_token.labels(model).observe(max(per_token, 0.0))

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))


class _EngineCollector:
    """Gauges of the loaded engines' load, read at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats() or EngineStats(slots=0, busy=0, waiting=0)
        yield GaugeMetricFamily("llm_slots", "Sequence slots of the loaded models.", stats.slots)
        yield GaugeMetricFamily(
            "llm_slots_busy", "Slots generating or prefilling a request.", stats.busy
        )
        yield GaugeMetricFamily(
            "llm_requests_deferred", "Requests waiting in the queue for a slot.", stats.waiting
        )
        yield CounterMetricFamily(
            "llm_draft_tokens",
            "Tokens drafted by prompt lookup and checked by the model (loaded models).",
            stats.drafted,
        )
        yield CounterMetricFamily(
            "llm_draft_tokens_accepted",
            "Drafted tokens the model would have picked, kept (loaded models).",
            stats.accepted,
        )


@get(
    "/metrics",
    guards=[admin_only],
    media_type=CONTENT_TYPE,
    summary="Prometheus metrics",
    description="Token counters, queue and slot gauges, latency histograms and HTTP request "
    "counts in Prometheus's text format. Admins only; with `APP_METRICS_LISTEN` set they are "
    "served openly on that address instead, and not here.",
    tags=["System"],
    sync_to_thread=False,
    responses=error_responses(401, 403),
)
def metrics_endpoint(metrics: NamedDependency[SkipValidation[Metrics]]) -> bytes:
    return metrics.render()


def metrics_listener(
    metrics: Metrics, listen: str | None
) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """The app's lifespan for ``APP_METRICS_LISTEN``: the open listener while the app runs (none
    when ``listen`` is None)."""

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        if listen is None:
            yield
            return
        stop = await asyncio.to_thread(serve_metrics, metrics, listen)
        logger.info("metrics served openly on http://%s/metrics", listen)
        try:
            yield
        finally:
            await asyncio.to_thread(stop)

    return lifespan


def serve_metrics(metrics: Metrics, listen: str) -> Callable[[], None]:
    """Serves the metrics openly on ``listen`` (``host:port``) in a thread; returns its stop."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
