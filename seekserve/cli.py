"""Command line: `seekserve serve | pull | models`."""

from __future__ import annotations

import argparse
import logging
import sys

from seekserve.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
    parse_size_bytes,
)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="GGUF file, Hugging Face directory, or catalogue name (default: smollm2-135m)",
    )
    p.add_argument("--served-model-name", default="deepseek-chat", help="name clients send")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute dtype; auto = bf16 on CPUs with AVX512-BF16/AMX and on CUDA, else fp32",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument(
        "--quantization",
        choices=["int8"],
        default=None,
        help="int8 weight-only linear layers: faster decode, outputs close to (not equal to) "
        "the unquantized model's",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key (repeatable); none = no authentication",
    )
    p.add_argument("--kv-cache-memory", default="1GiB", help="KV block pool budget, e.g. 2GiB")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="do not reuse the KV blocks of prompt prefixes seen before",
    )
    p.add_argument(
        "--disk-cache-dir",
        default=None,
        help="keep prefix-cache KV blocks on disk here too (survives restarts)",
    )
    p.add_argument("--disk-cache-size", default="10GiB", help="size cap of --disk-cache-dir")
    p.add_argument(
        "--shared-prefix-cache",
        action="store_true",
        help="share the prefix cache between API keys (default: one scope per key)",
    )
    p.add_argument(
        "--reasoning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a thinking model: split <think>...</think> into reasoning_content (default: "
        "when served as deepseek-reasoner)",
    )
    p.add_argument("--max-model-len", type=int, default=None, help="context length override")
    p.add_argument("--max-num-seqs", type=int, default=64, help="most concurrent requests")
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=512, help="token budget of one step"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument(
        "--keepalive-interval",
        type=float,
        default=10.0,
        help="seconds of silence after which a stream gets a ': keep-alive' comment",
    )
    p.add_argument("--log-level", default="info")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from seekserve.api.app import create_app

    engine_config = EngineConfig(
        model=ModelConfig(
            model=args.model,
            served_model_name=args.served_model_name,
            dtype=args.dtype,
            device=args.device,
            max_model_len=args.max_model_len,
            quantization=args.quantization,
            reasoning=args.reasoning,
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory_bytes=parse_size_bytes(args.kv_cache_memory),
            enable_prefix_caching=not args.no_prefix_caching,
            disk_cache_dir=args.disk_cache_dir,
            disk_cache_max_bytes=parse_size_bytes(args.disk_cache_size),
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens
        ),
        seed=args.seed,
        num_threads=args.threads,
    )
    server_config = ServerConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_key),
        shared_prefix_cache=args.shared_prefix_cache,
        keepalive_interval_s=args.keepalive_interval,
    )
    app = create_app(server_config, [engine_config])
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _pull(args: argparse.Namespace) -> int:
    from seekserve.loader.sources import ModelSourceError, pull

    try:
        path = pull(args.name, progress=not args.quiet)
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _models(_: argparse.Namespace) -> int:
    from seekserve.loader.sources import list_cached

    for name, path, size in list_cached():
        print(f"{name:24} {size / 2**20:8.1f} MiB  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seekserve",
        description="Self-hosted LLM inference server, wire-compatible with the DeepSeek API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over the DeepSeek HTTP API")
    _add_serve_args(serve)
    serve.set_defaults(func=_serve)
    pull = sub.add_parser("pull", help="fetch a catalogue model into the model cache")
    pull.add_argument("name", help="catalogue name, e.g. smollm2-135m")
    pull.add_argument("--quiet", action="store_true", help="no progress output")
    pull.set_defaults(func=_pull)
    models = sub.add_parser("models", help="list the models in the cache")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
