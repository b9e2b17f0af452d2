"""Linear layers with their weight prepacked for oneDNN (CPU, bf16).

`F.linear` on a CPU hands oneDNN the plain (out, in) weight, which oneDNN reorders into its
blocked layout on every call; for decode (a few rows of activations) that reorder costs about
as much as the matmul itself. `PackedLinear` reorders once, at load, and calls oneDNN's matmul
on the packed weight (`torch.ops.mkldnn._linear_pointwise`, the op Inductor's CPU backend
emits for the same purpose). Measured on the 2-core AMX machine, SmolLM2-135M's 121 matmuls of
one decode step: 25 ms plain → 18 ms packed at batch 1, 35 → 25 ms at batch 64
(`benchmarks/README.md`). Packed and plain results are equal at small batch and differ by bf16
rounding at large batch (oneDNN blocks the reduction differently).

Only bf16 is packed: for fp32 the packed path is slower at batch 1 on these CPUs.

With SeekServe's CPU kernels, a `PackedLinear` also keeps the weight in `bf16_linear`'s
tiled layout (`runner/csrc/linear_bf16.cpp`) for calls of up to `TILED_MAX_ROWS` rows: oneDNN
reads the weights at ~16 GB/s at batch 1, the kernel at ~22 GB/s (SmolLM2-135M's 120 layer
matmuls: 12.6 against 16.5 ms; equal at 3-4 rows, slower above). Where the CPU has AMX, the
kernel multiplies 3 to `AMX_MAX_ROWS` rows with AMX's tile products from the same layout, at
the speed of one row up to 16 rows (121 matmuls at 16 rows: 15.0 against oneDNN's 20.1 ms; at
64 rows both ~28 ms alone, but served at c=64 the step took 68 against 78 ms: the kernel's
threads take tiles in chunks, oneDNN's wait for each other when the OS pauses one). The
price is a second copy of the weights in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def can_pack(weight: torch.Tensor) -> bool:
    """True when `weight` can take the packed path: a bf16 CPU tensor and oneDNN present."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) dense → oneDNN's blocked layout (an opaque mkldnn tensor of the same shape)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x: (..., in) → (..., out) with a weight from `pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


TILED_MAX_ROWS = 2
"""Calls with at most this many rows take `bf16_linear` (when the layer has its layout)."""

AMX_MAX_ROWS = 64
"""... or this many, where `bf16_linear` has AMX's tile products (from 3 rows)."""


def tiled_max_rows(kernels: Any) -> int:
    """How many rows a call may have to take `bf16_linear` rather than oneDNN: 0 without
    kernels built with AVX512-BF16."""
    if kernels is None or not kernels.fast_bf16_linear:
        return 0
    return AMX_MAX_ROWS if kernels.amx_bf16_available() else TILED_MAX_ROWS


class PackedLinear(nn.Module):
    """An `nn.Linear` whose weight lives in oneDNN's packed layout (no dense copy) and, with
    `kernels` (SeekServe's CPU kernels module, built with AVX512-BF16), also in
    `bf16_linear`'s tiled layout."""

    def __init__(self, linear: nn.Linear, kernels: Any = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed_weight", pack_weight(linear.weight))
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.max_rows = tiled_max_rows(kernels)
        self.kernels = kernels if self.max_rows else None
        tiled = None if self.kernels is None else kernels.pack_bf16(linear.weight.detach())
        self.register_buffer("tiled_weight", tiled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and x.numel() <= self.max_rows * self.in_features:
            flat = x.reshape(-1, self.in_features).contiguous()
            out = self.kernels.bf16_linear(flat, self.tiled_weight, self.out_features, self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        return packed_linear(x, self.packed_weight, self.bias)

    def native(self, kernels: Any) -> Any:
        return kernels.Linear.packed(
            self.packed_weight, self.bias, self.tiled_weight, self.out_features, self.max_rows
        )


def replace_linears(
    model: nn.Module,
    make: Callable[[nn.Linear], nn.Module],
    where: Callable[[nn.Linear], bool] = lambda _: True,
) -> int:
    """Replace every `nn.Linear` of `model` for which `where` holds by `make(linear)`, in
    place; returns how many were replaced. A tied LM head gets its own copy; the embedding
    table stays as it is."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and where(child)
    ]
    for parent, name, child in targets:
        setattr(parent, name, make(child))
    return len(targets)


def pack_linears(model: nn.Module, kernels: Any = None) -> int:
    """Replace every bf16 CPU `nn.Linear` of `model` by a `PackedLinear` (given `kernels`),
    in place; returns how many were replaced (0 where the CPU build has no oneDNN or the model
    is not bf16)."""
    return replace_linears(
        model, lambda linear: PackedLinear(linear, kernels), lambda linear: can_pack(linear.weight)
    )


def native_linear(module: nn.Module, kernels: Any) -> Any:
    """`module` (an `nn.Linear` or a layer with a `native(kernels)` method) as the CPU kernels'
    `Linear`, which computes what `module` computes without Python (`runner/csrc/decoder.cpp`);
    None for any other module."""
    if hasattr(module, "native"):
        return module.native(kernels)
    if type(module) is nn.Linear:
        bias = None if module.bias is None else module.bias.detach()
        return kernels.Linear.dense(module.weight.detach(), bias)
    return None


def dense_linear(linear: nn.Linear) -> nn.Module:
    """`linear` as the fastest dense layer for many rows: packed where `can_pack`, else
    itself."""
    return PackedLinear(linear) if can_pack(linear.weight) else linear
