"""The gated MLP every architecture here uses: down(act(gate(x)) * up(x)), with gate and up
fused into one matmul (`gate_up_proj`; the loader concatenates the checkpoint's two)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.runner import cpu_kernels


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class GatedMLP(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    ) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is F.silu and getattr(self.gate_up_proj, "fuses_silu_mul", False):
            return self.down_proj(self.gate_up_proj.silu_and_mul(x))  # W8A8: in its epilogue
        gate_up = self.gate_up_proj(x)
        kernels = cpu_kernels.get(x.device)
        if kernels is not None and self.activation is F.silu and gate_up.is_contiguous():
            return self.down_proj(kernels.silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(self.activation(gate) * up)
