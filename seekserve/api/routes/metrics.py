"""`GET /metrics`: Prometheus text format.

Each app has its own registry (no process-global state) holding two kinds of metrics:

* read from the engines at scrape time (one collector): cumulative token and request
  counters, the KV pool's and the queues' current sizes;
* recorded as requests run: HTTP requests by route and status and their duration (the
  request-log middleware), time to first token, inter-token latency and end-to-end latency
  per model (`Generation.deltas`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from seekserve.api.state import ServerState

router = APIRouter()

_COUNTERS = [
    ("requests_admitted", "Requests admitted to the running set", "num_requests_admitted"),
    ("prompt_tokens", "Prompt tokens of admitted requests", "num_prompt_tokens"),
    (
        "prefix_cache_hit_tokens",
        "Prompt tokens served from the prefix cache (exact, before 64-token rounding)",
        "num_cached_prompt_tokens",
    ),
    (
        "prefix_cache_disk_hit_tokens",
        "Prompt tokens among the hits whose blocks were read from the disk tier",
        "num_disk_prompt_tokens",
    ),
    ("generation_tokens", "Tokens generated", "num_generated_tokens"),
    ("preemptions", "Requests preempted for lack of KV blocks", "num_preemptions"),
]


# seconds; LLM requests run from milliseconds (a 400) to minutes (a long stream)
_REQUEST_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5,
                   7.5, 10, 20, 40, 80, 160, 640)  # fmt: skip
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4,
                  0.5, 0.75, 1, 2.5, 5)  # fmt: skip


class ServerMetrics:
    """The app's registry and the metrics recorded while requests run."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.engines = EngineCollector()
        self.registry.register(self.engines)
        self.requests = Counter(
            "seekserve_requests",
            "HTTP requests by route and status (a stream counts once, when it ends)",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "seekserve_request_duration_seconds",
            "HTTP request duration, arrival to the last byte of the response",
            ["route"],
            buckets=_REQUEST_BUCKETS_S,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "seekserve_time_to_first_token_seconds",
            "Request arrival to its first generated token",
            ["model"],
            buckets=_TTFT_BUCKETS_S,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "seekserve_inter_token_latency_seconds",
            "Time between consecutive token outputs of a request",
            ["model"],
            buckets=_ITL_BUCKETS_S,
            registry=self.registry,
        )
        self.e2e_request_latency = Histogram(
            "seekserve_e2e_request_latency_seconds",
            "Request arrival to its last token, for generations that finished",
            ["model"],
            buckets=_REQUEST_BUCKETS_S,
            registry=self.registry,
        )

    def watch(self, state: ServerState) -> None:
        """Read the engines of `state` at scrape time (set once the lifespan starts)."""
        self.engines.state = state


class EngineCollector(Collector):
    """The engines' counters and gauges, read when scraped (nothing before `watch`)."""

    def __init__(self) -> None:
        self.state: ServerState | None = None

    def collect(self) -> Iterator[Metric]:
        if self.state is None:
            return
        engines = {
            name: served.engine.engine
            for name, served in self.state.models.items()
            if served.engine.engine is not None
        }
        for suffix, doc, field in _COUNTERS:
            family = CounterMetricFamily(f"seekserve_{suffix}", doc, labels=["model"])
            for name, engine in engines.items():
                family.add_metric([name], getattr(engine.scheduler.stats, field))
            yield family
        misses = CounterMetricFamily(
            "seekserve_prefix_cache_miss_tokens",
            "Prompt tokens computed because the prefix cache did not hold them",
            labels=["model"],
        )
        for name, engine in engines.items():
            stats = engine.scheduler.stats
            misses.add_metric([name], stats.num_prompt_tokens - stats.num_cached_prompt_tokens)
        yield misses
        yield from self._pool_gauges(engines)

    @staticmethod
    def _pool_gauges(engines: dict) -> Iterator[Metric]:
        gauges = {
            "kv_blocks_total": "KV blocks in the pool",
            "kv_blocks_used": "KV blocks referenced by requests",
            "prefix_cache_blocks": "Blocks held by the prefix cache (in memory)",
            "prefix_cache_bytes": "Bytes of KV held by the prefix cache (in memory)",
            "requests_running": "Requests in the running set",
            "requests_waiting": "Requests waiting for admission",
            "prefix_cache_disk_blocks": "Blocks in the disk tier",
            "prefix_cache_disk_bytes": "Bytes in the disk tier",
        }
        families = {
            key: GaugeMetricFamily(f"seekserve_{key}", doc, labels=["model"])
            for key, doc in gauges.items()
        }
        evictions = CounterMetricFamily(
            "seekserve_prefix_cache_evictions",
            "Cached blocks evicted from memory",
            labels=["model"],
        )
        for name, engine in engines.items():
            kv = engine.kv_cache
            values = {
                "kv_blocks_total": kv.num_total_blocks,
                "kv_blocks_used": kv.num_total_blocks - kv.num_free_blocks,
                "prefix_cache_blocks": kv.pool.num_cached_blocks,
                "prefix_cache_bytes": kv.pool.num_cached_blocks * engine.kv_bytes_per_block,
                "requests_running": len(engine.scheduler.running),
                "requests_waiting": len(engine.scheduler.waiting),
                "prefix_cache_disk_blocks": engine.disk.num_blocks if engine.disk else 0,
                "prefix_cache_disk_bytes": engine.disk.num_bytes if engine.disk else 0,
            }
            for key, value in values.items():
                families[key].add_metric([name], value)
            evictions.add_metric([name], kv.pool.num_evictions)
        yield from families.values()
        yield evictions


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
