#!/usr/bin/env python3
"""Soak test: many concurrent streams, a share of them hanging up at random moments, for a
fixed time; then the server must be back where it started.

    .venv/bin/python benchmarks/soak.py                       # 64 streams, 1/3 leave, 120 s
    .venv/bin/python benchmarks/soak.py --duration 30 --concurrency 16

It starts `seekserve serve` on the default model (or --model), warms it up, and records its
RSS; then `--concurrency` workers each keep one streaming chat request in flight (random
prompt from the bench kit, random max_tokens), and a worker whose coin says so closes its
stream after a random number of chunks. Every stream read to the end is checked: `data:`
framing, one role chunk first, a finish chunk with usage, `data: [DONE]` last, the usage's
completion_tokens within max_tokens. Afterwards (the server idle): `/metrics` must show no
KV block in use by requests and no request running or waiting, and the RSS must be within
10% of the warm RSS. Prints one JSON summary; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
PROMPTS = Path("/work/shared/bench/prompts/chat.txt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_prompts() -> list[str]:
    if PROMPTS.exists():
        return [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    return ["Tell me about the sea.", "Write a haiku about autumn.", "What is 2 + 2?"]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Stats:
    def __init__(self) -> None:
        self.completed = 0
        self.disconnected = 0
        self.invalid: list[str] = []
        self.errors: list[str] = []
        self.tokens = 0


def check_stream(events: list[str], max_tokens: int) -> str | None:
    """None when the stream is well formed, else what is wrong."""
    if not events or events[-1] != "data: [DONE]":
        return "no [DONE] at the end"
    chunks = []
    for event in events[:-1]:
        if not event.startswith("data: {"):
            return f"bad event {event[:60]!r}"
        chunks.append(json.loads(event.removeprefix("data: ")))
    if chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "first chunk has no role"
    last = chunks[-1]
    finish = last["choices"][0]["finish_reason"]
    if finish not in ("stop", "length") or "usage" not in last:
        return f"bad finish chunk {last}"
    if not 1 <= last["usage"]["completion_tokens"] <= max_tokens:
        return f"completion_tokens {last['usage']['completion_tokens']} vs max {max_tokens}"
    return None


async def worker(
    client: httpx.AsyncClient,
    base: str,
    prompts: list[str],
    stop_at: float,
    leave_fraction: float,
    rng: random.Random,
    stats: Stats,
) -> None:
    while time.monotonic() < stop_at:
        max_tokens = rng.randint(8, 96)
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": rng.choice(prompts)}],
            "max_tokens": max_tokens,
            "temperature": rng.choice([0.0, 0.7, 1.0]),
            "stream": True,
        }
        leave_after = rng.randint(1, 40) if rng.random() < leave_fraction else None
        events: list[str] = []
        try:
            async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    stats.errors.append(f"HTTP {response.status_code}")
                    continue
                async for line in response.aiter_lines():
                    if line:
                        events.append(line)
                    if leave_after is not None and len(events) >= leave_after:
                        break  # hang up mid-stream
        except httpx.HTTPError as exc:
            stats.errors.append(repr(exc))
            continue
        if leave_after is not None and len(events) >= leave_after:
            stats.disconnected += 1
            continue
        problem = check_stream(events, max_tokens)
        if problem:
            stats.invalid.append(problem)
        else:
            stats.completed += 1
            stats.tokens += json.loads(events[-2].removeprefix("data: "))["usage"][
                "completion_tokens"
            ]


async def soak(args: argparse.Namespace, base: str, proc: psutil.Process) -> dict:
    prompts = read_prompts()
    limits = httpx.Limits(max_connections=args.concurrency + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        for _ in range(4):  # warm-up: allocations, caches, compiled grammars
            await client.post(
                f"{base}/chat/completions",
                json={
                    "model": "deepseek-chat",
                    "messages": [{"role": "user", "content": prompts[0]}],
                    "max_tokens": 32,
                },
            )
        rss_warm = proc.memory_info().rss
        stats = Stats()
        rng = random.Random(args.seed)
        stop_at = time.monotonic() + args.duration
        started = time.monotonic()
        seeds = [rng.random() for _ in range(args.concurrency)]
        await asyncio.gather(
            *(
                worker(client, base, prompts, stop_at, args.leave, random.Random(seed), stats)
                for seed in seeds
            )
        )
        elapsed = time.monotonic() - started
        # idle: every request finished or aborted, every block back
        deadline = time.monotonic() + 30
        while True:
            text = (await client.get(f"{base}/metrics")).text
            used = metric(text, "seekserve_kv_blocks_used")
            running = metric(text, "seekserve_requests_running")
            waiting = metric(text, "seekserve_requests_waiting")
            if (used, running, waiting) == (0, 0, 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        rss_after = proc.memory_info().rss
    return {
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "completed": stats.completed,
        "disconnected": stats.disconnected,
        "invalid": len(stats.invalid),
        "errors": len(stats.errors),
        "output_tokens_of_completed": stats.tokens,
        "kv_blocks_used_after": used,
        "kv_blocks_total": metric(text, "seekserve_kv_blocks_total"),
        "requests_running_after": running,
        "requests_waiting_after": waiting,
        "rss_warm_mib": round(rss_warm / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_ratio": round(rss_after / rss_warm, 3),
        "first_problems": (stats.invalid + stats.errors)[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--leave", type=float, default=1 / 3, help="share of streams cut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(REPO / "benchmarks" / "soak-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seekserve",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--max-num-seqs",
            str(args.concurrency),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                print("server exited; see benchmarks/soak-server.log", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print("server did not start", file=sys.stderr)
                return 1
            time.sleep(0.5)
        summary = asyncio.run(soak(args, base, psutil.Process(server.pid)))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    ok = (
        summary["invalid"] == 0
        and summary["errors"] == 0
        and summary["kv_blocks_used_after"] == 0
        and summary["requests_running_after"] == 0
        and summary["requests_waiting_after"] == 0
        and summary["rss_ratio"] <= 1.10
        and summary["completed"] > 0
        and summary["disconnected"] > 0
    )
    summary["ok"] = ok
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
