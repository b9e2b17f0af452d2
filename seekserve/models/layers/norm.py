"""RMSNorm, and Gemma's variant that scales by (1 + weight); `add_norm`, the residual add
and the norm after it in one step (one kernel pass on a CPU with SeekServe's kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.runner import cpu_kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = cpu_kernels.get(x.device)
        if kernels is not None:
            return kernels.rms_norm(x.contiguous(), self.weight, self.eps)
        # accumulates in fp32, as the reference implementations do
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


def add_norm(
    residual: torch.Tensor, delta: torch.Tensor, norm: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + delta, norm(residual + delta)). With the CPU kernels and a plain RMSNorm
    it is one pass, and `residual` is updated in place (callers use the returned tensor)."""
    kernels = cpu_kernels.get(residual.device)
    if kernels is not None and type(norm) is RMSNorm and residual.is_contiguous():
        normed = kernels.add_rms_norm(residual, delta.contiguous(), norm.weight, norm.eps)
        return residual, normed
    residual = residual + delta
    return residual, norm(residual)
