#!/usr/bin/env python3
"""Closed-loop load generator for any OpenAI-compatible chat-completions server.

`--concurrency` workers each keep one streaming `POST {base}/v1/chat/completions` in flight:
as soon as one request ends, the worker sends the next, until `--requests` requests have been
sent. That batch is one *run*; `--repeat` runs are measured (after `--warmup` unmeasured
requests) and every metric is printed as the median over runs with its [min..max] range.

Per run:
  agg_out_tok_s     sum of completion_tokens (usage block) / wall time of the run
  decode_tok_s_p50  median over requests of (n_out - 1) / (t_last_token - t_first_token)
  ttft_p50, _p95    time from sending to the first non-empty content delta
  e2e_p50           time from sending to the end of the stream

Sampling is greedy (temperature 0). `--ignore-eos` sends `"ignore_eos": true` (a vLLM /
llama.cpp extension that SeekServe also accepts) so every request yields exactly
`--max-tokens` tokens; the script checks that and reports requests that fell short.

Usage numbers are checked too: `completion_tokens` must be present, positive, at most
`max_tokens` and at least the number of content chunks (a chunk carries >= 1 token).

Example:
  .venv/bin/python benchmarks/load.py --base-url http://127.0.0.1:8000 \\
      --concurrency 16 --requests 32 --max-tokens 128 --ignore-eos \\
      --prompt-file /work/shared/bench/prompts/chat.txt --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from seekserve.bench.sse_client import SSEConnection

CHAT_PATH = "/v1/chat/completions"

SUMMARY_KEYS = (
    "agg_out_tok_s",
    "decode_tok_s_p50",
    "ttft_p50",
    "ttft_p95",
    "e2e_p50",
    "out_tokens_mean",
    "prompt_tokens_mean",
    "cached_prompt_tokens_mean",
)


@dataclass
class LoadConfig:
    """Everything one load test needs; the CLI flags map onto these fields one to one."""

    base_url: str
    prompts: list[str]
    model: str | None = None  # None: the first id that GET /v1/models lists
    system: str | None = None
    concurrency: int = 1
    requests: int = 16
    max_tokens: int = 128
    ignore_eos: bool = False
    temperature: float = 0.0
    warmup: int = 0
    repeat: int = 3
    timeout: float = 300.0
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    # a fresh "cache_salt" per request, so a server with a prefix cache computes every
    # prompt cold (SeekServe and vLLM honour it)
    unique_cache_salt: bool = False
    label: str = ""


@dataclass
class RequestResult:
    t_start: float
    t_end: float
    ttft: float | None
    decode_time: float | None
    n_chunks: int
    completion_tokens: int | None
    prompt_tokens: int | None
    cached_prompt_tokens: int | None  # llama.cpp timings.cache_n, else usage cached_tokens
    finish_reason: str | None
    error: str | None

    @property
    def n_out(self) -> int:
        return self.completion_tokens if self.completion_tokens else self.n_chunks

    @property
    def e2e(self) -> float:
        return self.t_end - self.t_start


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; NaN for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def read_prompts(path: str | Path) -> list[str]:
    """One user prompt per non-empty line."""
    prompts = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise SystemExit(f"{path}: no prompts")
    return prompts


def request_body(cfg: LoadConfig, model: str, prompt: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    if cfg.system is not None:
        messages.insert(0, {"role": "system", "content": cfg.system})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    body.update(cfg.extra_body)
    if cfg.unique_cache_salt:
        body["cache_salt"] = uuid.uuid4().hex
    return body


async def stream_one(connection: SSEConnection, body: dict[str, Any]) -> RequestResult:
    t0 = time.perf_counter()
    t_first = t_last = None
    n_chunks = 0
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    finish = None
    error = None
    payload = json.dumps(body).encode()
    try:
        events = connection.post_stream(CHAT_PATH, payload)
        async with contextlib.aclosing(events):
            async for data in events:  # read to the end: the connection is then reused
                if data == b"[DONE]":
                    continue
                event = json.loads(data)
                if "error" in event and "choices" not in event:
                    raise RuntimeError(f"error event in stream: {data[:300]!r}")
                if event.get("usage"):
                    usage = event["usage"]
                if event.get("timings"):
                    timings = event["timings"]
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        now = time.perf_counter()
                        if t_first is None:
                            t_first = now
                        t_last = now
                        n_chunks += 1
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
    except Exception as exc:  # noqa: BLE001 - every failure is counted the same way
        error = f"{type(exc).__name__}: {exc}"
    completion = (usage or {}).get("completion_tokens")
    cached = (timings or {}).get("cache_n")
    if cached is None:
        cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return RequestResult(
        t_start=t0,
        t_end=time.perf_counter(),
        ttft=None if t_first is None else t_first - t0,
        decode_time=None if t_first is None or t_last is None else t_last - t_first,
        n_chunks=n_chunks,
        completion_tokens=completion if isinstance(completion, int) else None,
        prompt_tokens=(usage or {}).get("prompt_tokens"),
        cached_prompt_tokens=cached if isinstance(cached, int) else None,
        finish_reason=finish,
        error=error,
    )


def usage_problems(cfg: LoadConfig, r: RequestResult) -> list[str]:
    """Inconsistencies between what was streamed and what the usage block claims."""
    problems = []
    if r.completion_tokens is None:
        problems.append("no usage.completion_tokens in the stream")
        return problems
    if r.completion_tokens > cfg.max_tokens:
        problems.append(f"completion_tokens {r.completion_tokens} > max_tokens {cfg.max_tokens}")
    if r.completion_tokens < r.n_chunks:
        problems.append(f"completion_tokens {r.completion_tokens} < {r.n_chunks} content chunks")
    if cfg.ignore_eos and r.completion_tokens != cfg.max_tokens:
        problems.append(
            f"ignore_eos but completion_tokens {r.completion_tokens} != {cfg.max_tokens} "
            f"(finish_reason {r.finish_reason})"
        )
    if cfg.ignore_eos and r.finish_reason != "length":
        problems.append(f"ignore_eos but finish_reason {r.finish_reason!r}")
    return problems


async def resolve_model(client: httpx.AsyncClient, base_url: str) -> str:
    resp = await client.get(base_url.rstrip("/") + "/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def run_once(
    cfg: LoadConfig,
    connections: list[SSEConnection],
    model: str,
    n_requests: int,
    offset: int,
) -> dict[str, Any]:
    results: list[RequestResult] = []
    next_index = 0

    async def worker(connection: SSEConnection) -> None:
        nonlocal next_index
        while next_index < n_requests:
            i = next_index
            next_index += 1
            prompt = cfg.prompts[(offset + i) % len(cfg.prompts)]
            results.append(await stream_one(connection, request_body(cfg, model, prompt)))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections[: min(cfg.concurrency, n_requests)]))
    wall = time.perf_counter() - t0
    return summarize_run(cfg, results, wall)


def summarize_run(cfg: LoadConfig, results: list[RequestResult], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.error is None and r.ttft is not None]
    errors = [r.error or "no content streamed" for r in results if r not in ok]
    problems = [p for r in ok for p in usage_problems(cfg, r)]
    out_tokens = sum(r.n_out for r in ok)
    decode = [(r.n_out - 1) / r.decode_time for r in ok if r.decode_time and r.n_out > 1]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    prompt_tokens = [r.prompt_tokens for r in ok if isinstance(r.prompt_tokens, int)]
    cached = [r.cached_prompt_tokens for r in ok if r.cached_prompt_tokens is not None]
    nan = float("nan")
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "usage_problems": len(problems),
        "first_usage_problem": problems[0] if problems else None,
        "wall_s": wall,
        "out_tokens": out_tokens,
        "out_tokens_mean": out_tokens / len(ok) if ok else nan,
        "agg_out_tok_s": out_tokens / wall if wall > 0 else nan,
        "decode_tok_s_p50": statistics.median(decode) if decode else nan,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "e2e_p50": percentile([r.e2e for r in ok], 50),
        "prompt_tokens_mean": statistics.mean(prompt_tokens) if prompt_tokens else nan,
        "cached_prompt_tokens_mean": statistics.mean(cached) if cached else nan,
        "finish_reasons": sorted({str(r.finish_reason) for r in ok}),
        "per_request": [asdict(r) for r in results],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and range over runs of every summary metric (NaNs dropped)."""
    out = {}
    for key in SUMMARY_KEYS:
        vals = [r[key] for r in runs if r[key] == r[key]]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def fmt_value(key: str, v: float) -> str:
    if key.startswith(("ttft", "e2e")):
        return f"{v * 1000:.0f}ms"
    return f"{v:.1f}"


def run_line(i: int, n: int, r: dict[str, Any]) -> str:
    line = (
        f"run {i}/{n}: ok={r['ok']}/{r['requests']} wall={r['wall_s']:.2f}s "
        f"out_tok={r['out_tokens']} agg={r['agg_out_tok_s']:.1f} tok/s "
        f"decode_p50={r['decode_tok_s_p50']:.1f} tok/s ttft_p50={r['ttft_p50'] * 1000:.0f}ms "
        f"ttft_p95={r['ttft_p95'] * 1000:.0f}ms e2e_p50={r['e2e_p50'] * 1000:.0f}ms "
        f"prompt_tok={r['prompt_tokens_mean']:.0f} cached_tok={r['cached_prompt_tokens_mean']:.0f}"
    )
    for key, value in (r.get("probe") or {}).items():
        line += f" {key}={value:.2f}"
    if r["errors"]:
        line += f" ERRORS={r['errors']} first: {r['first_error']}"
    if r["usage_problems"]:
        line += f" USAGE_PROBLEMS={r['usage_problems']} first: {r['first_usage_problem']}"
    return line


async def run_load(
    cfg: LoadConfig,
    log: Callable[[str], None] = print,
    probe: Callable[[], Callable[[], dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Warm up, then make `cfg.repeat` measured runs; returns runs and their summary.

    `probe`, when given, is called right before each measured run and returns a function
    called right after it, whose numbers (e.g. CPU use) are stored in the run as "probe".
    """
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    if cfg.model:
        model = cfg.model
    else:
        async with httpx.AsyncClient(headers=headers, timeout=cfg.timeout) as client:
            model = await resolve_model(client, cfg.base_url)
    # one keep-alive connection per worker (bench/sse_client.py: httpx costs the server CPU)
    connections = [
        SSEConnection(cfg.base_url, headers=headers, timeout=cfg.timeout)
        for _ in range(cfg.concurrency)
    ]
    try:
        if cfg.warmup:
            w = await run_once(cfg, connections, model, cfg.warmup, offset=len(cfg.prompts) // 2)
            log(f"warmup: {w['ok']}/{w['requests']} ok in {w['wall_s']:.2f}s")
        runs = []
        for rep in range(cfg.repeat):
            stop_probe = probe() if probe else None
            run = await run_once(cfg, connections, model, cfg.requests, offset=rep * cfg.requests)
            if stop_probe:
                run["probe"] = stop_probe()
            runs.append(run)
            log(run_line(rep + 1, cfg.repeat, run))
    finally:
        for connection in connections:
            await connection.close()
    return {
        "config": {**asdict(cfg), "prompts": len(cfg.prompts), "model": model},
        "runs": runs,
        "summary": summarize(runs),
    }


def run_async(coroutine: Any) -> Any:
    """asyncio.run on uvloop's event loop (less client CPU per streamed event)."""
    return uvloop.run(coroutine)


def summary_line(cfg: LoadConfig, summary: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{k}={fmt_value(k, v['median'])} [{fmt_value(k, v['min'])}..{fmt_value(k, v['max'])}]"
        for k, v in summary.items()
    ]
    label = f"[{cfg.label}] " if cfg.label else ""
    return f"{label}c={cfg.concurrency} n={cfg.requests} x{cfg.repeat}: " + " ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    ap.add_argument("--model", default=None, help="model field (default: first of /v1/models)")
    ap.add_argument("--concurrency", type=int, default=1, help="requests kept in flight")
    ap.add_argument("--requests", type=int, default=16, help="requests per measured run")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-file", required=True, help="one user prompt per line")
    ap.add_argument("--system-file", default=None, help="sent as the system message")
    ap.add_argument("--ignore-eos", action="store_true", help='send "ignore_eos": true')
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument(
        "--extra-body",
        default=None,
        help="JSON merged into each body, e.g. '{\"cache_prompt\": false}'",
    )
    ap.add_argument("--warmup", type=int, default=0, help="unmeasured requests sent first")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, s")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--json-out", default=None, help="write config, runs and summary here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = None
    if args.system_file:
        system = Path(args.system_file).read_text(encoding="utf-8").strip()
    cfg = LoadConfig(
        base_url=args.base_url,
        prompts=read_prompts(args.prompt_file),
        model=args.model,
        system=system,
        concurrency=args.concurrency,
        requests=args.requests,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        warmup=args.warmup,
        repeat=args.repeat,
        timeout=args.timeout,
        api_key=args.api_key,
        extra_body=json.loads(args.extra_body) if args.extra_body else {},
        label=args.label,
    )
    result = run_async(run_load(cfg, log=lambda s: print(s, file=sys.stderr)))
    print(summary_line(cfg, result["summary"]))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    runs = result["runs"]
    return 1 if any(r["errors"] or r["usage_problems"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
