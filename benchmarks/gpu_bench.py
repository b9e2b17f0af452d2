"""Decode step time and prefill throughput of SeekServe's model runner, against the roofline.

What is measured: one `ModelRunner.compute_logits` step (host-side input preparation, the
copy to the device, the forward pass over the paged KV cache and the LM head; no sampling)
on a random-weight bf16 model shaped like Llama-3-8B (`--shape llama3-8b`) or a toy one
(`--shape tiny`, for the CPU smoke test).

* decode: `--batches` requests, each with one new token at position `--context` - 1 and its
  own block table (its earlier positions are already in the cache). Step time is the mean of
  `--iters` steps after two warm-up steps, with the device synchronized around the loop.
  Roofline: the bytes a step must read from HBM (every parameter once, the LM head
  included, plus the K and V of every cached position of every layer) / `--hbm-tbps`;
  "% of roofline" = roofline time / measured time.
* prefill: `--prefill-batches` requests of `--prefill-tokens` new tokens each, from position
  0, in one step (one request takes the causal SDPA path, several the gathered, masked
  one). Useful FLOPs = 2 x linear parameters x tokens + 2 x LM head x sampled rows +
  causal attention 4 x layers x heads x head_dim x sum over requests of n(n+1)/2;
  "% of peak" = achieved FLOP/s / `--peak-tflops`.

The weights are built on the meta device and materialized on the target device directly
(normal(0, 0.02), norms at 1), so an 8B model never passes through host memory. Prints a
markdown table and writes everything as JSON to `--json-out`. Needs only torch (and the
seekserve package on PYTHONPATH): `bash benchmarks/gpu.sh` runs it on a CUDA machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

# The runner imports the sampler, which imports xgrammar at module level; a bare PyTorch
# image may lack it and this benchmark never constrains a grammar: an empty module stands in.
if importlib.util.find_spec("xgrammar") is None:
    sys.modules["xgrammar"] = types.ModuleType("xgrammar")

from seekserve.engine.outputs import ScheduledRequest, SchedulerOutput  # noqa: E402
from seekserve.models.config import ModelArchConfig  # noqa: E402
from seekserve.models.llama import LlamaForCausalLM  # noqa: E402
from seekserve.runner.inputs import prepare_inputs  # noqa: E402
from seekserve.runner.model_runner import ModelRunner  # noqa: E402

BLOCK_SIZE = 16
WARMUP_STEPS = 2
DTYPE = torch.bfloat16

LLAMA3_8B = ModelArchConfig(
    architecture="llama",
    vocab_size=128_256,
    hidden_size=4096,
    intermediate_size=14_336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=False,
)
SHAPES = {
    "llama3-8b": LLAMA3_8B,
    # the same architecture, small enough for the CPU smoke test
    "tiny": replace(
        LLAMA3_8B,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    ),
}


def build_model(cfg: ModelArchConfig, device: torch.device) -> LlamaForCausalLM:
    """Random bf16 weights allocated on `device` only (built on meta, then materialized)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(DTYPE).to_empty(device=device).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    # the rotary tables were built on meta: compute them on the device
    with torch.device(device):
        model.rotary.init_buffers()
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter (a tied LM head counts once)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def linear_params(model: LlamaForCausalLM) -> int:
    """Parameters of the decoder layers' matmuls: what every token multiplies through."""
    return sum(
        m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)
    )


def kv_bytes_per_token(cfg: ModelArchConfig) -> int:
    element_size = torch.empty(0, dtype=DTYPE).element_size()
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * element_size


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(runner: ModelRunner, output: SchedulerOutput, iters: int) -> float:
    """Mean seconds of one `compute_logits` step, after warm-up."""
    for _ in range(WARMUP_STEPS):
        runner.compute_logits(output)
    synchronize(runner.device)
    start = time.perf_counter()
    for _ in range(iters):
        runner.compute_logits(output)
    synchronize(runner.device)
    return (time.perf_counter() - start) / iters


def time_prepare(output: SchedulerOutput, iters: int) -> float:
    """Mean seconds of the host-side input preparation alone (part of the step time)."""
    start = time.perf_counter()
    for _ in range(iters):
        prepare_inputs(output, BLOCK_SIZE)
    return (time.perf_counter() - start) / iters


def blocks_for(num_tokens: int) -> int:
    return -(-num_tokens // BLOCK_SIZE)


def decode_step(batch: int, context: int, vocab_size: int) -> SchedulerOutput:
    """`batch` requests, each decoding position context - 1 with its own blocks."""
    num_blocks = blocks_for(context)
    requests = [
        ScheduledRequest(
            request_id=f"d{b}",
            token_ids=[(7 * b + 1) % vocab_size],
            start_position=context - 1,
            block_ids=list(range(b * num_blocks, (b + 1) * num_blocks)),
            needs_sample=True,
        )
        for b in range(batch)
    ]
    return SchedulerOutput(scheduled=requests, preempted_request_ids=[])


def prefill_step(num_requests: int, num_tokens: int, vocab_size: int) -> SchedulerOutput:
    """`num_requests` prompts of `num_tokens` tokens from position 0, in one step."""
    num_blocks = blocks_for(num_tokens)
    requests = [
        ScheduledRequest(
            request_id=f"p{r}",
            token_ids=[(r * num_tokens + i) % vocab_size for i in range(num_tokens)],
            start_position=0,
            block_ids=list(range(r * num_blocks, (r + 1) * num_blocks)),
            needs_sample=True,
        )
        for r in range(num_requests)
    ]
    return SchedulerOutput(scheduled=requests, preempted_request_ids=[])


def bench_decode(
    runner: ModelRunner, cfg: ModelArchConfig, args: argparse.Namespace, weights: int
) -> list[dict[str, Any]]:
    rows = []
    for batch in args.batches:
        output = decode_step(batch, args.context, cfg.vocab_size)
        seconds = time_step(runner, output, args.iters)
        kv_bytes = kv_bytes_per_token(cfg) * batch * args.context
        roofline = (weights + kv_bytes) / (args.hbm_tbps * 1e12)
        rows.append(
            {
                "batch": batch,
                "context": args.context,
                "step_ms": seconds * 1e3,
                "prepare_ms": time_prepare(output, args.iters) * 1e3,
                "tok_s": batch / seconds,
                "weight_bytes": weights,
                "kv_bytes": kv_bytes,
                "roofline_ms": roofline * 1e3,
                "roofline_fraction": roofline / seconds,
            }
        )
    return rows


def prefill_flops(model: LlamaForCausalLM, cfg: ModelArchConfig, requests: int, n: int) -> int:
    matmuls = 2 * linear_params(model) * requests * n
    lm_head = 2 * cfg.vocab_size * cfg.hidden_size * requests
    attention = (
        4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * requests * n * (n + 1)
    ) // 2
    return matmuls + lm_head + attention


def bench_prefill(
    runner: ModelRunner, model: LlamaForCausalLM, cfg: ModelArchConfig, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for requests in args.prefill_batches:
        output = prefill_step(requests, args.prefill_tokens, cfg.vocab_size)
        seconds = time_step(runner, output, args.iters)
        flops = prefill_flops(model, cfg, requests, args.prefill_tokens)
        tokens = requests * args.prefill_tokens
        rows.append(
            {
                "requests": requests,
                "tokens_per_request": args.prefill_tokens,
                "tokens": tokens,
                "step_s": seconds,
                "tok_s": tokens / seconds,
                "flops": flops,
                "tflops": flops / seconds / 1e12,
                "peak_fraction": flops / seconds / (args.peak_tflops * 1e12),
            }
        )
    return rows


def markdown(decode: list[dict[str, Any]], prefill: list[dict[str, Any]]) -> str:
    lines = [
        "| batch | context | step ms | host prep ms | tok/s | roofline ms | % of roofline |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['batch']} | {r['context']} | {r['step_ms']:.2f} | {r['prepare_ms']:.2f} "
            f"| {r['tok_s']:.0f} | {r['roofline_ms']:.2f} | {100 * r['roofline_fraction']:.1f} |"
            for r in decode
        ),
        "",
        "| prefill requests x tokens | tokens | s | tok/s | TFLOP/s | % of peak |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['requests']} x {r['tokens_per_request']} | {r['tokens']} | {r['step_s']:.3f} "
            f"| {r['tok_s']:.0f} | {r['tflops']:.1f} | {100 * r['peak_fraction']:.1f} |"
            for r in prefill
        ),
    ]
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--batches", type=int_list, default=[1, 32, 256], help="decode batches")
    parser.add_argument("--context", type=int, default=1024, help="kv positions per decode")
    parser.add_argument("--prefill-tokens", type=int, default=2048, help="new tokens/request")
    parser.add_argument("--prefill-batches", type=int_list, default=[1, 4], help="requests")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--hbm-tbps", type=float, default=4.3, help="HBM bandwidth, TB/s")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak")
    parser.add_argument("--json-out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = SHAPES[args.shape]
    if max(args.context, args.prefill_tokens) > cfg.max_position_embeddings:
        raise SystemExit(f"context and prefill tokens must be <= {cfg.max_position_embeddings}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(cfg, device)
    num_blocks = 1 + max(
        max(args.batches, default=0) * blocks_for(args.context),
        max(args.prefill_batches, default=0) * blocks_for(args.prefill_tokens),
    )
    runner = ModelRunner(
        model, cfg, num_blocks, BLOCK_SIZE, DTYPE, device, seed=0, cpu_kernels_enabled=False
    )
    weights = weight_bytes(model)
    decode = bench_decode(runner, cfg, args, weights)
    prefill = bench_prefill(runner, model, cfg, args)
    table = markdown(decode, prefill)
    print(table)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": args.shape,
        "config": {k: v for k, v in asdict(cfg).items() if k != "hf_config"},
        "dtype": str(DTYPE),
        "block_size": BLOCK_SIZE,
        "num_kv_blocks": num_blocks,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weights,
        "iters": args.iters,
        "warmup_steps": WARMUP_STEPS,
        "hbm_tbps": args.hbm_tbps,
        "peak_tflops": args.peak_tflops,
        "max_memory_allocated": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "wall_s": time.perf_counter() - started,
    }
    result = {"meta": meta, "decode": decode, "prefill": prefill, "table": table}
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json_out}")
    return result


if __name__ == "__main__":
    main()
