"""Command line: `seekserve serve | pull | models | keys | chat | bench`."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from seekserve.config import (
    CacheConfig,
    EngineConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
    parse_size_bytes,
    seekserve_home,
)
from seekserve.logging_setup import configure_logging

_SERVE_EPILOG = """\
config file (--config FILE, TOML; .yaml/.yml with PyYAML): several models, one engine each.

  [[models]]
  name = "deepseek-chat"          # served name clients send (required, unique)
  model = "smollm2-135m"          # catalogue name, .gguf, HF directory, org/name[:file] (required)
  kv_cache_memory = "512MiB"      # KV pool budget
  memory_budget = "1GiB"          # weights + KV pool must fit, else the start fails
  price_output = 0.42             # USD per 1M tokens charged to ledger keys (also
                                  # price_cache_hit, price_cache_miss; V3.2's by default)

  [[models]]
  name = "deepseek-reasoner"
  model = "models/qwen.gguf"      # relative paths: from the config file's folder
  reasoning = true
  chat_template_file = "think.jinja"   # or chat_template = "{% for m in messages %}..."
  max_num_seqs = 16

other model keys: dtype, device, quantization, max_model_len, max_output_tokens,
default_max_tokens, block_size, num_blocks, prefix_caching, disk_cache_dir,
disk_cache_size, max_num_batched_tokens, seed, threads. A key a model omits takes the
value of the matching flag below (e.g. --device cuda applies to every model); --model and
--served-model-name cannot be combined with --config.
"""


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="GGUF file, Hugging Face directory, catalogue name, or Hugging Face repo id "
        "org/name[:file.gguf] (default: smollm2-135m)",
    )
    p.add_argument(
        "--served-model-name", default=None, help="name clients send (default: deepseek-chat)"
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="serve the models of this TOML/YAML file (format below) instead of --model",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        help="chat template replacing the model's: a file path, or the Jinja text itself",
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        help="fail at start unless weights + KV pool fit in this, e.g. 4GiB (default: no check)",
    )
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
        choices=["int8", "w8a8"],
        default=None,
        help="int8: int8 weight-only linear layers (faster decode); w8a8: int8 weights times "
        "activations quantized to int8 in blocks of 32 (integer dot products: faster batched "
        "decode and prefill where the CPU has AVX512-VNNI but no AMX). Outputs close to (not "
        "equal to) the unquantized model's",
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
        "--max-num-batched-tokens",
        type=int,
        default=2048,
        help="token budget of one step (longer prompts are prefilled in chunks of it)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument(
        "--keepalive-interval",
        type=float,
        default=10.0,
        help="seconds of silence after which a stream gets a ': keep-alive' comment",
    )
    p.add_argument(
        "--ledger",
        nargs="?",
        const=str(default_ledger_path()),
        default=None,
        metavar="PATH",
        help="authenticate with the keys of this SQLite ledger (`seekserve keys`), charge their "
        f"usage and answer 402 when a balance is spent (default path: {default_ledger_path()})",
    )
    p.add_argument(
        "--no-billing", action="store_true", help="with --ledger: keys only, nothing charged"
    )
    p.add_argument(
        "--concurrency-limit",
        type=int,
        default=None,
        help="requests in flight per key before 429 (a ledger key's own limit wins)",
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=1024,
        help="per model: requests in flight before 503 Server Overloaded",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds the requests in flight may take to finish before exit",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (ts, level, logger, msg, request_id, ...)",
    )


def _serve(args: argparse.Namespace) -> int:
    # the imports make a few hundred thousand objects that live as long as the process: no
    # cyclic-collector passes over them while they are made, and frozen afterwards (the
    # engine thread does the same for the model it loads: `AsyncEngine`)
    gc.disable()
    import uvicorn

    from seekserve.api.app import create_app

    try:
        engine_configs = _engine_configs(args)
    except ValueError as exc:
        gc.enable()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server_config = ServerConfig(
        host=args.host,
        port=args.port,
        api_keys=tuple(args.api_key),
        shared_prefix_cache=args.shared_prefix_cache,
        keepalive_interval_s=args.keepalive_interval,
        ledger_path=args.ledger,
        billing=not args.no_billing,
        concurrency_limit=args.concurrency_limit,
        max_queued_requests=args.max_queued_requests,
        drain_timeout_s=args.drain_timeout,
        load_in_background=True,  # listen at once: /health says "loading" until ready
        exit_on_load_failure=True,  # ... and a model that cannot load ends the process
    )
    app = create_app(server_config, engine_configs)
    gc.freeze()
    gc.enable()
    # SIGTERM: stop accepting, let requests in flight finish (bounded), then stop the engines
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's records go through our handler (text or JSON)
        access_log=False,  # seekserve.access logs each request, with its id and tokens
        timeout_graceful_shutdown=server_config.drain_timeout_s,
    )
    return 0


def _engine_configs(args: argparse.Namespace) -> list[EngineConfig]:
    """The flags' one model, or the --config file's models with the flags as defaults."""
    if args.config is not None and (args.model or args.served_model_name):
        raise ValueError(
            "--model and --served-model-name cannot be combined with --config; "
            "name the models in the config file"
        )
    base = EngineConfig(
        model=ModelConfig(
            model=args.model or "smollm2-135m",
            served_model_name=args.served_model_name or "deepseek-chat",
            dtype=args.dtype,
            device=args.device,
            max_model_len=args.max_model_len,
            quantization=args.quantization,
            reasoning=args.reasoning,
            chat_template=_chat_template_text(args.chat_template),
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
        memory_budget_bytes=(
            None if args.memory_budget is None else parse_size_bytes(args.memory_budget)
        ),
    )
    if args.config is None:
        return [base]
    from seekserve.config_file import load_config_file

    return load_config_file(args.config, base)


def _chat_template_text(value: str | None) -> str | None:
    """--chat-template: an existing file's text, else the value itself when it looks like
    Jinja ({{ or {%); ValueError otherwise (a mistyped path)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"--chat-template {value!r} is neither a file nor Jinja template text")


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
    from seekserve.config import seekserve_home
    from seekserve.loader.sources import list_cached

    cached = list_cached()
    if not cached:
        print(f"no models in {seekserve_home()}; run `seekserve pull smollm2-135m`")
    for name, path, size in cached:
        print(f"{name:24} {size / 2**20:8.1f} MiB  {path}")
    return 0


def default_ledger_path() -> Path:
    return seekserve_home() / "ledger.db"


def _keys(args: argparse.Namespace) -> int:
    from seekserve.accounts.ledger import Ledger
    from seekserve.accounts.prices import nano_to_usd_text, usd_to_nano

    ledger = Ledger(args.ledger)
    try:
        if args.action == "create":
            key, record = ledger.create_key(
                args.name,
                granted_nano=usd_to_nano(args.granted),
                topped_up_nano=usd_to_nano(args.balance),
                concurrency_limit=args.concurrency,
            )
            print(f"created key {record.id} ({record.name}); shown once, keep it safe:")
            print(key)
        elif args.action == "list":
            print(f"{'id':>4}  {'name':20} {'key':10} {'balance':>12} {'granted':>10}  status")
            for r in ledger.list_keys():
                status = "revoked" if r.is_revoked else "active"
                print(
                    f"{r.id:>4}  {r.name:20} {'sk-…' + r.key_last4:10} "
                    f"{nano_to_usd_text(r.total_nano):>12} "
                    f"{nano_to_usd_text(r.granted_nano):>10}  {status}"
                )
        elif args.action == "revoke":
            if not ledger.revoke(args.id):
                print(f"error: no active key with id {args.id}", file=sys.stderr)
                return 1
            print(f"revoked key {args.id}")
        else:  # top-up
            field = "granted_nano" if args.granted else "topped_up_nano"
            try:
                record = ledger.top_up(args.id, **{field: usd_to_nano(args.amount)})
            except (KeyError, ValueError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"key {record.id} balance: {nano_to_usd_text(record.total_nano)} USD")
    finally:
        ledger.close()
    return 0


def _add_keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser(
        "keys", help="API keys and balances of the ledger (serve it with --ledger)"
    )
    keys.add_argument(
        "--ledger", default=str(default_ledger_path()), help="SQLite ledger file (created if new)"
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key; printed once, stored hashed")
    create.add_argument("name", help="who the key is for")
    create.add_argument("--balance", default="0", help="topped-up balance, USD (default 0)")
    create.add_argument("--granted", default="0", help="granted balance, USD, spent first")
    create.add_argument("--concurrency", type=int, default=None, help="requests in flight")
    actions.add_parser("list", help="keys with their balances (never the keys themselves)")
    revoke = actions.add_parser("revoke", help="disable a key for good")
    revoke.add_argument("id", type=int)
    top_up = actions.add_parser("top-up", help="add to a key's balance")
    top_up.add_argument("id", type=int)
    top_up.add_argument("amount", help="USD, e.g. 10 or 2.50")
    top_up.add_argument("--granted", action="store_true", help="add granted balance instead")
    keys.set_defaults(func=_keys)


_CHAT_EPILOG = """\
in the chat:
  /reset          forget the conversation (the --system message stays)
  /exit, Ctrl-D   quit
  /help           list these commands

examples:
  seekserve chat                                  # the server of `seekserve serve`
  seekserve chat --url http://gpu-box:8000 --api-key sk-... --model-name deepseek-reasoner
  seekserve chat --model smollm2-135m --system "Answer in one sentence."   # no server needed
"""


def _add_chat_parser(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser(
        "chat",
        help="talk to a model in the terminal (a running server, or --model in-process)",
        description="An interactive chat. Each turn sends the whole conversation to\n"
        "/chat/completions and streams the reply as it is generated; a thinking model's\n"
        "reasoning is shown dimmed, before the answer.",
        epilog=_CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="base URL of a running SeekServe or DeepSeek-API server (default: %(default)s)",
    )
    chat.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_NAME",
        help="load this model in-process instead of using --url: GGUF file, Hugging Face "
        "directory, catalogue name or repo id, as `serve --model`",
    )
    chat.add_argument(
        "--model-name",
        default="deepseek-chat",
        help="the model field sent with each request (default: %(default)s)",
    )
    chat.add_argument("--api-key", default=None, help="bearer key, when the server wants one")
    chat.add_argument("--system", default=None, metavar="TEXT", help="a system message")
    chat.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (server default)"
    )
    chat.add_argument(
        "--max-tokens", type=int, default=None, help="most tokens per reply (server default)"
    )
    chat.add_argument(
        "--verbose", action="store_true", help="show each reply's token usage after it"
    )
    chat.add_argument(
        "--device", default="cpu", help="with --model: torch device (cpu, cuda) (default: cpu)"
    )
    chat.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="with --model: compute dtype, as `serve --dtype` (default: auto)",
    )
    chat.add_argument(
        "--log-level", default="warning", help="log level of the in-process server (--model)"
    )
    chat.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from seekserve.chat_repl import ChatOptions, local_server, run_repl

    options = ChatOptions(
        model=args.model_name,
        system=args.system,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        is_verbose=args.verbose,
    )
    if args.model is None:
        return run_repl(args.url, options, api_key=args.api_key)
    config = EngineConfig(
        model=ModelConfig(
            model=args.model,
            served_model_name=args.model_name,
            device=args.device,
            dtype=args.dtype,
        )
    )
    print(f"loading {args.model} ...", file=sys.stderr)
    try:
        with local_server(config, log_level=args.log_level) as base_url:
            return run_repl(base_url, options)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    if args.kind == "load":
        from seekserve.bench.load import main as load_main

        return load_main(args.rest)
    from seekserve.bench.serving import main as compare_main

    return compare_main(args.rest)


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure a server: a load generator, or SeekServe beside llama.cpp's server",
        description="`seekserve bench load --base-url URL ...`: closed-loop streaming load on "
        "any OpenAI-compatible server (concurrency, fixed prompts, EOS ignored, warm-up, "
        "repeats; median and range). `seekserve bench compare ...`: starts llama-server and "
        "SeekServe on the same GGUF, one at a time, runs the same scenarios (c1, c4, c16, "
        "c64, long-cold, long-warm) and prints a ratio table with peak RSS. Pass --help after "
        "the kind for its options.",
    )
    bench.add_argument("kind", choices=["load", "compare"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that command")
    bench.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seekserve",
        description="Self-hosted LLM inference server, wire-compatible with the DeepSeek API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a model (or several, --config) over the DeepSeek HTTP API",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_args(serve)
    serve.set_defaults(func=_serve)
    pull = sub.add_parser(
        "pull", help="fetch a catalogue model or a Hugging Face repo into the model cache"
    )
    pull.add_argument(
        "name",
        help="catalogue name (smollm2-135m, qwen2.5-coder-0.5b) or Hugging Face repo id "
        "org/name[:file.gguf]",
    )
    pull.add_argument("--quiet", action="store_true", help="no progress output")
    pull.set_defaults(func=_pull)
    models = sub.add_parser("models", help="list the models in the cache")
    models.set_defaults(func=_models)
    _add_keys_parser(sub)
    _add_bench_parser(sub)
    _add_chat_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    # the HTTP clients (chat, bench, hub probes) would log every request at info
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
