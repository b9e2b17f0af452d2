"""Configuration: frozen dataclasses, one per owner, validated once.

This is the only module that reads environment variables. Components receive the config
object (or the few fields they need) in `__init__`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seekserve.accounts.prices import Prices

logger = logging.getLogger(__name__)

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def seekserve_home() -> Path:
    """Root of SeekServe's files (model cache): `$SEEKSERVE_HOME`, default ~/.cache/seekserve."""
    return Path(os.environ.get("SEEKSERVE_HOME") or Path.home() / ".cache" / "seekserve")


def kernels_dir() -> Path:
    """Where SeekServe's compiled CPU kernels are cached: `$SEEKSERVE_KERNELS_DIR`, default
    ~/.cache/seekserve/kernels. Not under `$SEEKSERVE_HOME`: a fresh home (tests, a second
    model cache) reuses the build instead of compiling again."""
    default = Path.home() / ".cache" / "seekserve" / "kernels"
    return Path(os.environ.get("SEEKSERVE_KERNELS_DIR") or default)


def parse_size_bytes(text: str | int) -> int:
    """'2GiB', '512M', '1g', '1048576' -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"invalid size {text!r}; use a number with an optional unit, e.g. 2GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (bf16 matmul faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'auto' → bf16 on CUDA or on CPUs with AVX512-BF16/AMX, else fp32; logs the choice."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(_DTYPES)}")
        logger.info("compute dtype %s (set by --dtype)", name)
        return _DTYPES[name]
    if device.startswith("cuda"):
        reason, dtype = "CUDA device", torch.bfloat16
    elif cpu_has_fast_bf16():
        reason, dtype = "CPU has AVX512-BF16/AMX", torch.bfloat16
    else:
        reason, dtype = "CPU lacks AVX512-BF16/AMX", torch.float32
    logger.info("compute dtype %s (auto: %s)", str(dtype).removeprefix("torch."), reason)
    return dtype


@dataclass(frozen=True)
class ModelConfig:
    model: str
    """A GGUF file, a Hugging Face directory, or a catalogue name (`seekserve pull NAME`)."""
    served_model_name: str = "deepseek-chat"
    """The name clients send in `model`."""
    dtype: str = "auto"
    """Compute dtype: auto | float32 | bfloat16 | float16."""
    device: str = "cpu"
    """torch device the weights and KV cache live on."""
    max_model_len: int | None = None
    """Context length (prompt + output); default: the model's trained context."""
    reasoning: bool | None = None
    """A thinking model (`<think>` output split into reasoning_content); None: when served
    as deepseek-reasoner."""
    max_output_tokens: int | None = None
    """Upper bound of `max_tokens`; None: DeepSeek's, 8192 (chat) or 65536 (reasoner)."""
    default_max_tokens: int | None = None
    """`max_tokens` when a request omits it, capped by the context; None: DeepSeek's, 4096
    (chat) or 32768 (reasoner)."""
    quantization: str | None = None
    """None, "int8" (int8 weight-only linear layers: faster bandwidth-bound decode) or "w8a8"
    (int8 weights times int8 activations: faster batched decode and prefill without AMX)."""
    price_cache_hit: float = 0.028
    """USD per 1M prompt tokens served from the prefix cache (DeepSeek V3.2's price)."""
    price_cache_miss: float = 0.28
    """USD per 1M prompt tokens computed."""
    price_output: float = 0.42
    """USD per 1M output tokens (reasoning included)."""
    chat_template: str | None = None
    """Jinja chat template (its text) replacing the model's own; None: the model's."""

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len ({self.max_model_len}) must be >= 2")
        if self.quantization not in (None, "int8", "w8a8"):
            raise ValueError(
                f"quantization {self.quantization!r} is not supported; use int8 or w8a8"
            )
        if not 1 <= self.output_tokens_default <= self.output_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.output_tokens_default}) must be in "
                f"[1, max_output_tokens={self.output_tokens_limit}]"
            )

    @property
    def prices(self) -> Prices:
        return Prices(self.price_cache_hit, self.price_cache_miss, self.price_output)

    @property
    def is_reasoning(self) -> bool:
        if self.reasoning is None:
            return self.served_model_name == "deepseek-reasoner"
        return self.reasoning

    @property
    def output_tokens_limit(self) -> int:
        if self.max_output_tokens is not None:
            return self.max_output_tokens
        return 65536 if self.is_reasoning else 8192

    @property
    def output_tokens_default(self) -> int:
        if self.default_max_tokens is not None:
            return self.default_max_tokens
        return min(32768 if self.is_reasoning else 4096, self.output_tokens_limit)


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    """Tokens per KV block."""
    kv_cache_memory_bytes: int = 1 << 30
    """Memory budget of the KV block pool (all layers, K and V)."""
    num_blocks: int | None = None
    """Exact pool size; overrides kv_cache_memory_bytes (tests)."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of prompt prefixes computed before (automatic prefix cache)."""
    disk_cache_dir: str | None = None
    """Directory of the prefix cache's disk tier (kept across restarts); None: memory only."""
    disk_cache_max_bytes: int = 10 << 30
    """Size cap of the disk tier; least recently used blocks are deleted beyond it."""

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size ({self.block_size}) must be a power of two")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks ({self.num_blocks}) must be >= 1")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    """Most requests in the running set."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step, shared by decodes and prefill chunks."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs ({self.max_num_seqs}) must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) < max_num_seqs "
                f"({self.max_num_seqs}): every running request needs a token per step; raise "
                "--max-num-batched-tokens or lower --max-num-seqs"
            )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    """Accepted bearer keys; empty means no authentication."""
    system_fingerprint: str = "fp_seekserve"
    """`system_fingerprint` of every response."""
    keepalive_interval_s: float = 10.0
    """A stream silent this long (queued, long prefill) gets a `: keep-alive` SSE comment."""
    shared_prefix_cache: bool = False
    """With API keys: False isolates each key's prefix cache (as DeepSeek isolates users),
    True shares it (single tenant). Without keys the cache is always shared."""
    ledger_path: str | None = None
    """SQLite ledger of keys, balances and usage (`seekserve keys`); None: no ledger."""
    billing: bool = True
    """With a ledger: charge usage and answer 402 for spent keys (False: keys only)."""
    concurrency_limit: int | None = None
    """Requests in flight per key (a ledger key's own limit wins); None: unlimited."""
    max_queued_requests: int = 1024
    """Per model: requests in flight beyond this many → 503 Server Overloaded."""
    max_queued_tokens: int = 4 * 1024 * 1024
    """Per model: prompt tokens of the requests in flight beyond this → 503."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted (413 above)."""
    start_deadline_s: float = 600.0
    """A request that has not produced its first token after this long is closed with 503
    (DeepSeek: 10 minutes)."""
    drain_timeout_s: float = 30.0
    """On SIGTERM: how long in-flight requests may finish before the server exits."""
    load_in_background: bool = False
    """Load the models after startup, answering /health ("loading") and 503 meanwhile
    (`seekserve serve`); False: the app starts serving once every model is loaded."""
    exit_on_load_failure: bool = False
    """With background loading: a model that fails to load shuts the server down (SIGTERM
    to itself, so a supervisor sees the failed start) instead of staying up to report it."""

    def __post_init__(self) -> None:
        for name in ("max_queued_requests", "max_queued_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError(f"concurrency_limit ({self.concurrency_limit}) must be >= 1")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: int = 0
    """Seed of the sampling generator."""
    num_threads: int | None = None
    """torch intra-op threads; default: torch's choice (`SEEKSERVE_NUM_THREADS` overrides)."""
    cpu_kernels: bool | None = None
    """The CPU fast path: SeekServe's compiled kernels (`runner/cpu_kernels.py`) and
    oneDNN-prepacked bf16 weights (`models/layers/linear.py`); False: plain PyTorch ops (the
    reference path). None: on unless `SEEKSERVE_CPU_KERNELS=0`."""
    memory_budget_bytes: int | None = None
    """Most memory this model may take on its device: weights plus KV pool; None: unchecked.
    A model over it fails at start (`check_memory_budget`)."""

    def check_memory_budget(self, weight_bytes: int, kv_cache_bytes: int) -> None:
        """ValueError with the numbers when weights + KV pool exceed `memory_budget_bytes`."""
        budget = self.memory_budget_bytes
        if budget is None or weight_bytes + kv_cache_bytes <= budget:
            return
        raise ValueError(
            f"model {self.model.served_model_name!r} ({self.model.model}) does not fit its "
            f"memory budget: weights {weight_bytes} bytes ({weight_bytes / 2**20:.1f} MiB) + "
            f"KV cache {kv_cache_bytes} bytes ({kv_cache_bytes / 2**20:.1f} MiB) = "
            f"{weight_bytes + kv_cache_bytes} bytes > budget {budget} bytes "
            f"({budget / 2**20:.1f} MiB); raise memory_budget, or lower kv_cache_memory "
            "(or use a smaller dtype / quantization)"
        )

    @property
    def use_cpu_kernels(self) -> bool:
        if self.cpu_kernels is not None:
            return self.cpu_kernels
        return os.environ.get("SEEKSERVE_CPU_KERNELS", "1") not in ("0", "false", "no")

    @staticmethod
    def env_num_threads() -> int | None:
        value = os.environ.get("SEEKSERVE_NUM_THREADS")
        return int(value) if value else None


def duplicate_served_name(configs: list[EngineConfig]) -> tuple[str, int, int] | None:
    """The first served model name given twice, with the 1-based positions of its first and
    second config; None when every name is unique."""
    first: dict[str, int] = {}
    for index, config in enumerate(configs, start=1):
        name = config.model.served_model_name
        if name in first:
            return name, first[name], index
        first[name] = index
    return None
