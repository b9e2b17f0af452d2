"""Int8 weight-only linear layers: decode on a CPU is bound by reading weights, and int8
halves the bytes of bf16 (per-output-channel symmetric scales; activations stay in the
compute dtype). Opt-in (`--quantization int8`): outputs are close to, not equal to, the
unquantized model's.
"""

from __future__ import annotations

import torch
from torch import nn


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
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_linears_int8(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` in place; returns how many were replaced. A tied
    LM head gets its own int8 copy (the embedding table stays as it is)."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear(child))
    return len(targets)
