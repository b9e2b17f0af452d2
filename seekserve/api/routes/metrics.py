"""`GET /metrics`: Prometheus text format, read from the engines at scrape time.

Each app has its own registry (no process-global state), with one collector that reads the
engines' cumulative counters and the KV pool's current sizes when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class EngineCollector(Collector):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
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


def make_registry(state: ServerState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(state))
    return registry


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
