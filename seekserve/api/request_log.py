"""What the server tells its operator: one access-log line and the request metrics per HTTP
request, and the summary of a model when it is ready to serve.

The access line (logger `seekserve.access`) carries method, path, status, duration and, for
a generation, the model and its token counts, both in the text and as `extra` fields (the
JSON log's keys); the request id comes from the trace-id middleware's context variable.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekserve.api.routes.metrics import ServerMetrics
from seekserve.api.state import ServedModel

access_logger = logging.getLogger("seekserve.access")
logger = logging.getLogger("seekserve.api")


class RequestLog:
    """Counts every HTTP request by route and status, times it, and logs its access line,
    once it has ended (a stream after its last chunk). Plain ASGI: nothing is buffered."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival_s = time.monotonic()
        request_state = scope.setdefault("state", {})  # `request.state` of the route
        request_state["arrival_s"] = arrival_s
        status = 500  # unless a response starts: an exception left the app

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            duration_s = time.monotonic() - arrival_s
            route = self._route_of(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(duration_s)
            _log_access(scope, status, duration_s, request_state.get("generation"))

    def _route_of(self, scope: Scope) -> str:
        """The path template of the route that served the request (routing sets
        `scope["route"]`); for a request answered before routing (503 while loading, 413),
        its path when the app has such a route; else "unmatched". A bounded label set,
        whatever paths clients try."""
        route = scope.get("route")
        if route is not None:
            return str(route.path)
        if self._paths is None:
            self._paths = frozenset(scope["app"].openapi()["paths"])
        return scope["path"] if scope["path"] in self._paths else "unmatched"


def _log_access(scope: Scope, status: int, duration_s: float, generation: Any) -> None:
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_s": round(duration_s, 6),
    }
    text = f"{scope['method']} {scope['path']} {status} {duration_s:.3f}s"
    if generation is not None:  # an `api.generation.Generation` the route started
        fields |= {
            "model": generation.served.name,
            "completion_id": generation.request_id,
            "prompt_tokens": len(generation.prompt_token_ids),
            "completion_tokens": generation.num_output_tokens,
            "cached_tokens": generation.num_cached_tokens,
        }
        text += (
            f" model={fields['model']} prompt_tokens={fields['prompt_tokens']} "
            f"completion_tokens={fields['completion_tokens']}"
        )
    access_logger.info(text, extra=fields)


def log_model_summary(served: ServedModel, listen_url: str) -> None:
    """One block per model once its engine runs: what is served, from where, how big, how
    much context the KV pool holds."""
    engine = served.engine.engine
    assert engine is not None, "the engine has started"
    cache = engine.config.cache
    num_blocks, block_size = engine.kv_cache.num_total_blocks, cache.block_size
    num_params, num_weight_bytes = _parameters(engine.runner.model)
    num_kv_bytes = num_blocks * engine.kv_bytes_per_block
    disk = "off"
    if engine.disk is not None:
        disk = f"{cache.disk_cache_dir} (cap {cache.disk_cache_max_bytes / 2**30:.1f} GiB)"
    fields = {
        "model": served.name,
        "model_path": engine.config.model.model,
        "architecture": engine.arch.architecture,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "num_parameters": num_params,
        "weight_bytes": num_weight_bytes,
        "kv_capacity_tokens": num_blocks * block_size,
        "kv_capacity_bytes": num_kv_bytes,
        "max_model_len": engine.max_model_len,
        "prefix_cache": cache.enable_prefix_caching,
        "disk_cache": disk,
        "listen": listen_url,
    }
    logger.info(
        "model %r ready\n"
        "  path           %s\n"
        "  architecture   %s, %s, %.1fM parameters (%.1f MiB)\n"
        "  KV cache       %d blocks x %d tokens = %d tokens (%.1f MiB)\n"
        "  max_model_len  %d\n"
        "  prefix cache   %s, disk tier %s\n"
        "  listening on   %s",
        served.name,
        fields["model_path"],
        fields["architecture"],
        fields["dtype"],
        num_params / 1e6,
        num_weight_bytes / 2**20,
        num_blocks,
        block_size,
        num_blocks * block_size,
        num_kv_bytes / 2**20,
        engine.max_model_len,
        "on" if cache.enable_prefix_caching else "off",
        disk,
        listen_url,
        extra=fields,
    )


def _parameters(model: Any) -> tuple[int, int]:
    """(number of elements, bytes) of the model's parameters and buffers, tied ones once."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return (
        sum(t.numel() for t in tensors.values()),
        sum(t.numel() * t.element_size() for t in tensors.values()),
    )
