"""Int8 linear layers, opt-in: outputs are close to, not equal to, the unquantized model's.

* `--quantization int8`, `Int8Linear`: weight-only. Decode on a CPU is bound by reading
  weights, and int8 halves the bytes of bf16 (per-output-channel symmetric scales;
  activations stay in the compute dtype).
* `--quantization w8a8`, `W8A8Linear` (below): the same int8 weights times activations
  quantized to int8 per block of 32, on integer dot products: for CPUs whose bf16 products
  are slow (no AMX), where batched decode and prefill are bound by the vector units.

Int8 weight-only has two kernels, both for a few rows of activations (decode):
* with SeekServe's CPU kernels, `int8_linear` (`runner/csrc/linear_int8.cpp`) on weights
  tiled at load: SmolLM2-135M's 120 layer matmuls take 3.6 ms at batch 1 (30 GB/s, the
  machine's streaming read rate), 4.5 ms at 4 rows, 8.8 ms at 8; where the CPU has AMX, bf16
  activations of 3 to `AMX_MAX_ROWS` rows go through AMX's tile products instead, the int8
  weights widened to bf16 on the fly;
* otherwise `torch._weight_int8pack_mm`: 10 ms at batch 1, 2.7x slower than bf16 at 16 rows.
Above `max_rows` rows a matrix-matrix product wins, so each layer also keeps its dequantized
weights (int8 * scale, rounded to the compute dtype) in the dense (oneDNN-packed where
possible) layout and multiplies those: the same quantized model either way.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.models.layers.linear import dense_linear, native_linear, replace_linears

INT8_MAX_ROWS = 4
"""Calls with at most this many rows (tokens) take `torch._weight_int8pack_mm`."""
TILED_MAX_ROWS = 8
"""... or SeekServe's `int8_linear` (8 rows: 8.8 ms against 13.4 ms for the bf16 matmuls)."""
AMX_MAX_ROWS = 64
"""... up to this many where `int8_linear` has AMX's tile products (from 3 rows, bf16)."""


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weights → int8 weights and fp32 per-output-channel scales (symmetric)."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, kernels: Any = None) -> None:
        """`kernels`: SeekServe's CPU kernels module (`cpu_kernels.get`; built with AVX-512):
        the weights are kept in `int8_linear`'s tiled layout and the kernel serves few rows."""
        super().__init__()
        quantized, scales = quantize_weight(linear.weight)
        dtype = linear.weight.dtype
        scales = scales.to(dtype)  # every path multiplies by these
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernels = kernels if kernels is not None and kernels.fast_int8_linear else None
        if self.kernels is not None:
            self.register_buffer("weight_int8", kernels.pack_int8(quantized))  # tiled
            self.register_buffer("scales", scales.float())
            amx = dtype == torch.bfloat16 and kernels.amx_bf16_available()
            self.max_rows = AMX_MAX_ROWS if amx else TILED_MAX_ROWS
        else:
            self.register_buffer("weight_int8", quantized)  # (out, in)
            self.register_buffer("scales", scales)
            # the int8 kernel is fast for bf16 activations only (10x slower in fp32 here)
            self.max_rows = INT8_MAX_ROWS if dtype == torch.bfloat16 else 0
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        # the same quantized weights, dequantized, for calls with more rows
        dequantized = nn.Linear(
            self.in_features, self.out_features, bias=bias is not None, device="meta"
        )
        dequantized.weight = nn.Parameter(
            (quantized.float() * scales.float()[:, None]).to(dtype), requires_grad=False
        )
        dequantized.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dense = dense_linear(dequantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] > self.max_rows:
            out = self.dense(flat)
        elif self.kernels is not None:
            out = self.kernels.int8_linear(
                flat.contiguous(), self.weight_int8, self.scales, self.bias
            )
        else:
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
            if self.bias is not None:
                out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def native(self, kernels: Any) -> Any:
        dense = native_linear(self.dense, kernels)
        return kernels.Linear.int8(
            self.weight_int8, self.scales, self.bias, dense, self.max_rows, self.kernels is not None
        )


W8A8_BLOCK = 32
"""Activations are quantized to int8 in blocks of this many input features (one scale each)."""


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) → int8 values as fp32 (M, K / W8A8_BLOCK, W8A8_BLOCK) and fp32 scales (M, blocks):
    scale = max |x| / 127 of the block, value = round-half-even(x / scale), 0 where scale is 0."""
    rows, k_size = x.shape
    blocks = x.float().reshape(rows, k_size // W8A8_BLOCK, W8A8_BLOCK)
    scales = blocks.abs().amax(dim=-1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))[..., None]
    values = torch.where(scales[..., None] > 0, torch.round(blocks / safe), 0.0)
    return values.clamp(-127, 127), scales


class W8A8Linear(nn.Module):
    """int8 weights (as `Int8Linear`) times activations quantized to int8 per block of 32
    (`--quantization w8a8`), the way llama.cpp multiplies its quantized weights by Q8_0
    activations. Where the CPU has no AMX, batched decode and prefill are bound by the vector
    units, and AVX512-VNNI's integer dot products (64 products an instruction against 32 for
    bf16) make these layers faster than bf16 or int8 weight-only (SmolLM2-135M's matmuls at 64
    rows on a 2-core AMD EPYC: 17.9 ms against 22.8 ms bf16 and 40 ms int8 weight-only; at 1 row
    as fast as int8 weight-only). Outputs are close to the unquantized model's, and the kernel
    (`runner/csrc/linear_w8a8.cpp`) and `w8a8_reference` compute the same bits:

        out = cast(acc · scale[n] (+ bias)),  acc = fma(D_b, d_b, acc) over the blocks b in
        order, D_b = the exact integer dot product of block b, d_b its activation scale.
    """

    def __init__(self, linear: nn.Linear, kernels: Any = None, silu_mul: bool = False) -> None:
        """`kernels`: SeekServe's CPU kernels (`cpu_kernels.get`); with AVX512-VNNI the
        weights are kept in `w8a8_linear`'s layout, else `w8a8_reference` computes the layer.

        `silu_mul`: `linear` is a gated MLP's [gate ‖ up] layer with silu. With the kernels,
        no bias and half the outputs a multiple of 16, its packed rows are then interleaved by
        16 (gate 16t..16t+15, then up 16t..16t+15, for each t) so that `silu_and_mul`
        computes silu(gate) · up in the kernel's epilogue (`fuses_silu_mul`), bit for bit what
        `silu_and_mul` of the layer's output gives, without that (M, 2·I) output (a
        1,130-token prompt: 7 MB a layer written and read back). `forward` still returns
        [gate ‖ up] in order."""
        super().__init__()
        if linear.in_features % W8A8_BLOCK:
            raise ValueError(f"w8a8 needs in_features divisible by {W8A8_BLOCK}")
        quantized, scales = quantize_weight(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernels = kernels if kernels is not None and kernels.fast_w8a8_linear else None
        half = self.out_features // 2
        self.fuses_silu_mul = (
            silu_mul
            and self.kernels is not None
            and linear.bias is None
            and self.out_features == 2 * half
            and half % 16 == 0
        )
        self.register_buffer("output_order", None)
        if self.fuses_silu_mul:
            order = torch.arange(self.out_features).view(2, half // 16, 16).transpose(0, 1)
            order = order.flatten()
            quantized, scales = quantized[order].contiguous(), scales[order].contiguous()
            self.output_order = torch.argsort(order)  # [gate ‖ up] column j: column order⁻¹[j]
        self.register_buffer("scales", scales)
        if self.kernels is not None:
            packed, offsets = self.kernels.pack_w8a8(quantized)
            self.register_buffer("weight_int8", packed)
            self.register_buffer("offsets", offsets)
        else:
            self.register_buffer("weight_int8", quantized)  # (out, in)
            self.offsets = None
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) · up of this layer's [gate ‖ up] output (`fuses_silu_mul` layers)."""
        flat = x.reshape(-1, self.in_features).contiguous()
        out = self.kernels.w8a8_silu_mul(flat, self.weight_int8, self.offsets, self.scales)
        return out.reshape(*x.shape[:-1], self.out_features // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.kernels is not None:
            out = self.kernels.w8a8_linear(
                flat.contiguous(), self.weight_int8, self.offsets, self.scales, self.bias
            )
            if self.output_order is not None:  # interleaved rows (silu_mul): back in order
                out = out[:, self.output_order]
        else:
            out = w8a8_reference(flat, self.weight_int8, self.scales, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def native(self, kernels: Any) -> Any:
        if self.kernels is None:
            return None  # the native decoder has no reference path: Python layers then
        if self.fuses_silu_mul:
            return kernels.Linear.w8a8_silu_mul(self.weight_int8, self.offsets, self.scales)
        return kernels.Linear.w8a8(self.weight_int8, self.offsets, self.scales, self.bias)


def w8a8_reference(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`W8A8Linear`'s layer in plain PyTorch, bit for bit what the kernel computes: x (M, K),
    weight (N, K) int8, scales (N,) fp32. Block dot products are exact in fp32 (|D| < 2^24);
    the fused multiply-add is computed in fp64 (the product exact) and rounded to fp32."""
    values, act_scales = quantize_activations(x)
    blocks = values.shape[1]
    w = weight.float().reshape(weight.shape[0], blocks, W8A8_BLOCK)
    acc = torch.zeros(x.shape[0], weight.shape[0], dtype=torch.float32)
    for b in range(blocks):
        dots = values[:, b, :] @ w[:, b, :].T
        fused = dots.double() * act_scales[:, b].double()[:, None] + acc.double()
        acc = fused.float()
    out = acc * scales
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def quantize_linears_w8a8(model: nn.Module, kernels: Any = None) -> int:
    """Replace every nn.Linear of `model` whose in_features is a multiple of 32 by a
    `W8A8Linear` and the others by an `Int8Linear`, in place; returns how many were
    replaced."""
    # gated MLPs with silu: the activation in their gate_up kernel's epilogue
    silu_gate_ups = {
        id(module.gate_up_proj)
        for module in model.modules()
        if getattr(module, "activation", None) is F.silu and hasattr(module, "gate_up_proj")
    }
    return replace_linears(
        model,
        lambda linear: (
            W8A8Linear(linear, kernels, silu_mul=id(linear) in silu_gate_ups)
            if linear.in_features % W8A8_BLOCK == 0
            else Int8Linear(linear, kernels)
        ),
    )


def quantize_linears_int8(model: nn.Module, kernels: Any = None) -> int:
    """Replace every nn.Linear of `model` in place; returns how many were replaced. A tied
    LM head gets its own int8 copy (the embedding table stays as it is). `kernels`: see
    `Int8Linear`."""
    return replace_linears(model, lambda linear: Int8Linear(linear, kernels))
