"""Engine step times on this CPU: the fast path beside the plain-PyTorch reference path, in
one run (same process, same weights, alternating), so the ratio survives a noisy machine.

    .venv/bin/python benchmarks/engine_step.py                      # SmolLM2-135M, ~2 min
    .venv/bin/python benchmarks/engine_step.py --quantization int8 --batches 1

Rows: decode step time at each batch size (every request 40 prompt tokens, then greedy
decode; median over `--steps` steps after warm-up), and the time to prefill one 1,130-token
prompt from scratch (median of 3). Columns: the reference path (`cpu_kernels=False`: F.linear
on plain weights, gather + SDPA attention, composite norms), the fast path (prepacked oneDNN
weights, SeekServe's C++ kernels), and reference ÷ fast. No HTTP: `seekserve bench compare`
measures the server.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from seekserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from seekserve.engine.engine import Engine
from seekserve.runner import cpu_kernels
from seekserve.sampling_params import SamplingParams

DEFAULT_GGUF = Path.home() / ".cache/seekserve/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"


def build(args: argparse.Namespace, fast: bool) -> Engine:
    config = EngineConfig(
        model=ModelConfig(model=str(args.model), quantization=args.quantization),
        cache=CacheConfig(enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_seqs=max(args.batches), max_num_batched_tokens=2048),
        num_threads=args.threads,
        cpu_kernels=fast,
    )
    return Engine.from_config(config, frozenset())


def decode_ms(engine: Engine, fast: bool, batch: int, steps: int) -> float:
    cpu_kernels.enable(fast)
    params = SamplingParams(max_tokens=steps + 10, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"d{batch}-{i}", [1 + (i * 7 + j) % 1000 for j in range(40)], params)
    engine.step()  # the prefills
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return statistics.median(times[3:]) * 1e3


def prefill_ms(engine: Engine, fast: bool, tag: str) -> float:
    cpu_kernels.enable(fast)
    times = []
    for i in range(4):
        prompt = [1 + (j * 7 + i) % 1000 for j in range(1130)]
        engine.add_request(f"p{tag}{i}", prompt, SamplingParams(max_tokens=1, temperature=0.0))
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--quantization", choices=["int8", "w8a8"], default=None)
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16, 64])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engines = {fast: build(args, fast) for fast in (False, True)}
    rows = []
    for batch in args.batches:
        ms = {fast: decode_ms(engines[fast], fast, batch, args.steps) for fast in (False, True)}
        rows.append((f"decode step, batch {batch} (ms)", ms[False], ms[True]))
    ms = {fast: prefill_ms(engines[fast], fast, str(fast)) for fast in (False, True)}
    rows.append(("prefill 1,130 tokens (ms)", ms[False], ms[True]))
    quant = args.quantization or "none"
    print(f"\n{args.model.name}, quantization {quant}, {args.threads} threads")
    print("| step | reference path | fast path | reference / fast |")
    print("|---|---|---|---|")
    for name, slow, fast in rows:
        print(f"| {name} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f} |")


if __name__ == "__main__":
    main()
