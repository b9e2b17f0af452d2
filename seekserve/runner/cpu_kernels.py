"""SeekServe's own CPU kernels (`runner/csrc/`), compiled on first use for this machine.

* `paged_decode_attention(q, kv_cache, block_table, kv_lens, scale)`: PyTorch has no paged
  attention for the CPU; the reference backend gathers every request's K/V blocks into a
  padded batch and runs SDPA over the copy, reading the cache twice and writing it once. The
  kernel reads the blocks in place. Measured on the 2-core AMX machine (bf16, 208 cached
  tokens, 3 KV heads of 64): 1.1 ms instead of 2.1 ms for 64 requests, 0.2 ms instead of
  0.7 ms for 16.
* `rms_norm`, `add_rms_norm` (residual add fused in), `silu_and_mul`: one pass per row where
  PyTorch's composite versions launch 6-10 ops (F.rms_norm on bf16 took 120 µs for 64 rows
  of 576 here, the kernel takes a few µs).
* `bf16_linear` / `int8_linear` (with `pack_bf16` / `pack_int8`): matrix-vector products for
  decode on weights tiled at load, streamed at memory speed (`models/layers/linear.py`,
  `quant.py` use them); `argmax_rows`: greedy decoding's argmax, rows in parallel.
* `w8a8_linear` (with `pack_w8a8`): int8 weights × activations quantized to int8 per block of
  32, on AVX512-VNNI, any number of rows (`models/layers/quant.py: W8A8Linear`).
* `prefill_attention`: causal flash attention of a prefill from position 0 (bf16, head_dim
  64/128), where SDPA ran at ~126 GFLOP/s on a CPU without AMX (`runner/attention.py`);
  `paged_prefill_attention`: the same over several requests' chunks, each after its cached
  prefix, K/V read from the blocks in place.
* `Decoder` / `Linear` / `StepGroup`: a llama-family step (decodes, and bf16 prefill chunks),
  all layers in one call without Python (`models/layers/causal_lm.py`).

The extension is built with `torch.utils.cpp_extension` (g++ and ninja, ~2 min once) into
`kernels_dir()/<torch version>-<hash of the CPU flags and the csrc/ path>`
(~/.cache/seekserve/kernels), with
`-march=native`: a build only ever runs on the CPU it was made for. Without a compiler, or with
`SEEKSERVE_CPU_KERNELS=0`, everything runs on the plain PyTorch path (same results up to
float rounding).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from pathlib import Path
from typing import Any

import torch

from seekserve.config import kernels_dir

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = (
    "bindings.cpp",
    "paged_attention.cpp",
    "prefill_attention.cpp",
    "norm_activation.cpp",
    "decoder.cpp",
    "linear_int8.cpp",
    "linear_bf16.cpp",
    "linear_w8a8.cpp",
    "argmax.cpp",
    "huge_pages.cpp",
)
_lock = threading.Lock()
_module: Any = None
_failed = False
_enabled = False


def _build_directory() -> Path:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "flags" in line
        )
    except (OSError, StopIteration):
        flags = platform.processor()
    # and where the sources are: two checkouts (a clean clone's CI beside a working tree)
    # sharing one directory rebuilt each other's build at every start (~2.5 min each time);
    # one checkout keeps its directory, so an edit rebuilds only the changed files
    key = f"{flags}\n{_CSRC.resolve()}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return kernels_dir() / f"torch{torch.__version__}-{tag}"


def _load() -> Any:
    global _module, _failed
    with _lock:
        if _module is not None or _failed:
            return _module
        try:
            from torch.utils.cpp_extension import load

            directory = _build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            logger.info("loading SeekServe's CPU kernels (first use builds them: ~2 min)")
            _module = load(
                name="seekserve_cpu_kernels",
                sources=[str(_CSRC / name) for name in _SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_include_paths=[str(_CSRC)],
                build_directory=str(directory),
                verbose=False,
            )
        except Exception as error:  # no compiler, no ninja, a failed build: plain PyTorch
            _failed = True
            logger.warning("CPU kernels unavailable, using the PyTorch path: %s", error)
        return _module


def enable(enabled: bool = True) -> bool:
    """Turn the kernels on (building them now, not during the first request) or off, for the
    whole process; returns whether they are in use."""
    global _enabled
    _enabled = enabled and _load() is not None
    return _enabled


def get(device: torch.device) -> Any:
    """The kernels module when they are enabled and `device` is the CPU, else None (callers
    then take their PyTorch path)."""
    if not _enabled or device.type != "cpu":
        return None
    return _module
