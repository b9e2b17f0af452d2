"""RMSNorm, and Gemma's variant that scales by (1 + weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused kernel (it accumulates in fp32, as the reference implementations do)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class GemmaRMSNorm(nn.Module):
    """RMSNorm whose stored weight is an offset from 1 (Gemma checkpoints: zero = identity).
    Computed in fp32 and cast back, as Gemma's reference implementation does."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.weight.float()
        return F.rms_norm(x.float(), self.weight.shape, scale, self.eps).to(x.dtype)
