"""Int8 weight-only linear layers: decode on a CPU is bound by reading weights, and int8
halves the bytes of bf16 (per-output-channel symmetric scales; activations stay in the
compute dtype). Opt-in (`--quantization int8`): outputs are close to, not equal to, the
unquantized model's.

The int8 kernel (`torch._weight_int8pack_mm`) is a matrix-vector kernel: at batch 1 it reads
SmolLM2-135M's weights in 14 ms where bf16 takes 18 ms, but at batch 16 it is 2.7x slower
than bf16 (it does not use AMX). So each layer also keeps its dequantized weights
(int8 * scale, rounded to the compute dtype) in the dense (oneDNN-packed where possible)
layout, and a call with more than `INT8_MAX_ROWS` rows multiplies those: the same quantized
model either way, one kernel per batch size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seekserve.models.layers.linear import dense_linear, native_linear, replace_linears

INT8_MAX_ROWS = 4
"""Calls with at most this many rows (tokens) take the int8 kernel."""


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (out,)
        quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", quantized)  # (out, in)
        self.register_buffer("scales", scales.to(dtype))
        # the int8 kernel is fast for bf16 activations only (10x slower in fp32 here)
        self.int8_kernel = dtype == torch.bfloat16
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        # the same quantized weights, dequantized, for calls with more rows
        dequantized = nn.Linear(
            self.in_features, self.out_features, bias=bias is not None, device="meta"
        )
        dequantized.weight = nn.Parameter(
            (quantized.float() * self.scales.float()[:, None]).to(dtype), requires_grad=False
        )
        dequantized.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dense = dense_linear(dequantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.int8_kernel and flat.shape[0] <= INT8_MAX_ROWS:
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = self.dense(flat)
        return out.reshape(*x.shape[:-1], self.out_features)

    def native(self, kernels: Any) -> Any:
        dense = native_linear(self.dense, kernels)
        max_rows = INT8_MAX_ROWS if self.int8_kernel else 0
        return kernels.Linear.int8(self.weight_int8, self.scales, self.bias, dense, max_rows)


def quantize_linears_int8(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` in place; returns how many were replaced. A tied
    LM head gets its own int8 copy (the embedding table stays as it is)."""
    return replace_linears(model, Int8Linear)
