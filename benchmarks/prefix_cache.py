#!/usr/bin/env python3
"""Prefix-cache TTFT: a ~2,000-token shared system prompt + short questions.

SeekServe (memory + disk tier) and llama.cpp's server (its in-memory prompt cache) on the same
GGUF, each alone on the machine, one request at a time, streaming, 8 output tokens:

    cold           SeekServe: a fresh cache_salt (nothing reusable); llama: cache_prompt false
    memory hit     the same system prompt again, new question
    disk hit       SeekServe only: the prompt's blocks were evicted from memory by other
                   traffic (a small KV pool + six other long prompts), still on disk
    after restart  SeekServe only: server restarted on the same --disk-cache-dir

Each repeat uses a new scope, so every "cold" is really cold. Prints TTFT medians [range],
each hit as a fraction of cold (goals: memory ≤ 0.10, disk ≤ 0.25), llama beside it, and the
hit tokens the servers reported.

    .venv/bin/python benchmarks/prefix_cache.py            # ~3 min
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

from seekserve.bench.load import stream_one
from seekserve.bench.serving import (
    DEFAULT_LLAMA_BIN,
    SERVED_NAME,
    Server,
    default_gguf,
    free_port,
    llama_argv,
    seekserve_argv,
)

HERE = Path(__file__).resolve().parent
TOPICS = [
    "billing questions", "password resets", "shipping delays", "product returns",
    "warranty claims", "account upgrades", "data exports", "privacy requests",
    "invoice corrections", "gift cards", "subscription pauses", "device pairing",
    "accessibility needs", "order tracking", "refund timelines", "store hours",
]  # fmt: skip
ACTIONS = [
    "confirm the customer's name and order number before giving any details",
    "explain the next step in plain language and avoid internal jargon",
    "offer a written summary that the customer can keep for later reference",
    "check whether a similar case was opened in the last thirty days",
    "say how long the process usually takes and what may delay it",
    "ask one clarifying question when the request is ambiguous",
]
QUESTIONS = [
    "How do I reset my password?",
    "My parcel is late, what can I do?",
    "Can I pause my subscription for a month?",
    "Where can I download my data?",
]


def system_prompt(variant: int = 0) -> str:
    """A deterministic ~2,000-token system prompt; `variant` changes its first line."""
    lines = [f"You are Juniper (desk {variant}), the assistant of the Northwind help desk."]
    for number in range(1, 40):  # 39 rules: ~1,970 tokens with the chat template
        index, round_ = (number - 1) % len(TOPICS), (number - 1) // len(TOPICS)
        topic = TOPICS[index]
        first = ACTIONS[(index + round_) % len(ACTIONS)]
        second = ACTIONS[(index + round_ + 3) % len(ACTIONS)]
        lines.append(
            f"Rule {number}. For {topic}, always {first}, then {second}; if the customer "
            f"also mentions {TOPICS[(index + 5) % len(TOPICS)]}, handle {topic} first."
        )
    return "\n".join(lines)


def body(system: str, question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": SERVED_NAME,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def ttft(server: Server, payload: dict[str, Any]) -> tuple[float, int | None, int | None]:
    async with httpx.AsyncClient(timeout=300) as client:
        result = await stream_one(client, server.base_url + "/v1/chat/completions", payload)
    if result.error or result.ttft is None:
        raise RuntimeError(f"{server.key}: {result.error}")
    return result.ttft, result.prompt_tokens, result.cached_prompt_tokens


def measure_seekserve(args: argparse.Namespace, out: dict[str, list]) -> None:
    disk_dir = tempfile.mkdtemp(prefix="seekserve-kv-")
    # a pool of ~8,700 tokens: six other 2,000-token prompts evict the measured one
    serve_args = argparse.Namespace(**vars(args))
    serve_args.seekserve_args = (
        f"--disk-cache-dir {disk_dir} --kv-cache-memory 200MiB {args.seekserve_args}"
    )
    port = free_port()
    server = Server("seekserve", seekserve_argv(serve_args, port), port, HERE / "results/pc.log")
    system = system_prompt()
    salts = [uuid.uuid4().hex for _ in range(args.repeat)]
    server.start(args.startup_timeout)
    try:
        asyncio.run(ttft(server, body(system, "warm-up", cache_salt="warm-up")))
        for salt in salts:
            record(
                out, "cold", asyncio.run(ttft(server, body(system, QUESTIONS[0], cache_salt=salt)))
            )
            record(
                out,
                "memory",
                asyncio.run(ttft(server, body(system, QUESTIONS[1], cache_salt=salt))),
            )
            for filler in range(6):
                asyncio.run(ttft(server, body(system_prompt(filler + 1), "x", cache_salt=salt)))
            before = disk_hit_tokens(server)
            record(
                out, "disk", asyncio.run(ttft(server, body(system, QUESTIONS[2], cache_salt=salt)))
            )
            out["disk_tokens_read"].append(disk_hit_tokens(server) - before)
    finally:
        server.stop()
    server.start(args.startup_timeout)  # same argv: same disk directory
    try:
        asyncio.run(ttft(server, body("warm-up", "warm-up")))
        for salt in salts:
            record(
                out,
                "restart",
                asyncio.run(ttft(server, body(system, QUESTIONS[3], cache_salt=salt))),
            )
    finally:
        server.stop()


def disk_hit_tokens(server: Server) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("seekserve_prefix_cache_disk_hit_tokens_total"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def measure_llama(args: argparse.Namespace, out: dict[str, list]) -> None:
    port = free_port()
    server = Server("llama", llama_argv(args, port), port, HERE / "results/pc-llama.log")
    server.start(args.startup_timeout)
    try:
        system = system_prompt()
        asyncio.run(ttft(server, body("warm-up", "warm-up")))
        for _ in range(args.repeat):
            cold = asyncio.run(ttft(server, body(system, QUESTIONS[0], cache_prompt=False)))
            record(out, "cold", cold)
            asyncio.run(ttft(server, body(system, QUESTIONS[0], cache_prompt=True)))  # fill
            record(out, "memory", asyncio.run(ttft(server, body(system, QUESTIONS[1]))))
    finally:
        server.stop()


def record(out: dict[str, list], name: str, result: tuple[float, int | None, int | None]) -> None:
    seconds, prompt_tokens, cached = result
    out[name].append(seconds)
    out[f"{name}_cached"].append(cached)
    out["prompt_tokens"].append(prompt_tokens)


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.3f}s [{min(values):.3f}..{max(values):.3f}]"


def report(ss: dict[str, list], ll: dict[str, list]) -> str:
    cold = statistics.median(ss["cold"])
    ll_cold = statistics.median(ll["cold"]) if ll["cold"] else None
    lines = [
        "| TTFT | SeekServe | ÷ its cold | hit tokens | llama-server | SeekServe ÷ llama |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("cold", "cold"),
        ("memory", "memory hit"),
        ("disk", "disk hit"),
        ("restart", "after restart"),
    ):
        ours = ss[name]
        theirs = ll.get(name, [])
        ratio = f"{statistics.median(ours) / cold:.2f}" if name != "cold" else "1"
        beside = f"{statistics.median(ours) / statistics.median(theirs):.2f}" if theirs else "—"
        hits = sorted({h for h in ss[f"{name}_cached"] if h is not None})
        lines.append(f"| {label} | {fmt(ours)} | {ratio} | {hits} | {fmt(theirs)} | {beside} |")
    prompt = sorted({p for p in ss["prompt_tokens"] if p})
    lines.append("")
    lines.append(
        f"prompt tokens {prompt}; disk-tier tokens read per disk hit "
        f"{ss['disk_tokens_read']}; llama cold {ll_cold and f'{ll_cold:.3f}s'}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bin", default=DEFAULT_LLAMA_BIN)
    ap.add_argument("--gguf", type=Path, default=default_gguf())
    ap.add_argument("--llama-args", default="")
    ap.add_argument("--seekserve-bin", default=str(Path(sys.executable).with_name("seekserve")))
    ap.add_argument("--seekserve-model", default="smollm2-135m")
    ap.add_argument("--seekserve-args", default="")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--skip-llama", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    (HERE / "results").mkdir(exist_ok=True)
    names = ["cold", "memory", "disk", "restart"]
    ss: dict[str, list] = {k: [] for k in names + [f"{n}_cached" for n in names]}
    ss.update(prompt_tokens=[], disk_tokens_read=[])
    ll: dict[str, list] = {k: [] for k in ["cold", "memory", "cold_cached", "memory_cached"]}
    ll.update(prompt_tokens=[])
    measure_seekserve(args, ss)
    if not args.skip_llama and Path(args.llama_bin).exists():
        measure_llama(args, ll)
    print(report(ss, ll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
