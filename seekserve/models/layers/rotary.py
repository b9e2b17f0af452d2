"""Rotary position embedding (rotate-half / NeoX layout, as Hugging Face stores weights)."""

from __future__ import annotations

import torch
from torch import nn

from seekserve.runner import cpu_kernels


class RotaryEmbedding(nn.Module):
    def __init__(
        self, head_dim: int, max_position: int, theta: float, linear_factor: float = 1.0
    ) -> None:
        """`linear_factor` > 1 is "linear" rope scaling: positions are divided by it."""
        super().__init__()
        self.head_dim, self.max_position, self.theta = head_dim, max_position, theta
        self.linear_factor = linear_factor
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the cos/sin tables, e.g. after the module was built on the meta device."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponents) / self.linear_factor
        freqs = torch.outer(torch.arange(self.max_position, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_position, head_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for every token: (T, 1, D), computed in fp32 and cast to `dtype` (the
        compute dtype, as transformers casts them). Once per step, used by every layer
        through `apply_rotary`."""
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (T, H, D), k: (T, Hkv, D); rope: the (cos, sin) of `RotaryEmbedding.forward`."""
    return rotate(q, rope), rotate(k, rope)


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: (T, heads, D) → rotated: the arithmetic of transformers' `apply_rotary_pos_emb`
    (x * cos + rotate_half(x) * sin) in the dtype of cos and sin. With the CPU kernels x is
    rotated in place (one pass instead of five ops) and returned; use the return value.
    A layer rotates its q and k heads in one call when they are adjacent in its qkv output."""
    cos, sin = rope
    kernels = cpu_kernels.get(x.device)
    if (
        kernels is not None
        and x.dtype == cos.dtype
        and x.stride(-1) == 1
        and x.stride(-2) == x.shape[-1]
        and cos.is_contiguous()
        and sin.is_contiguous()
    ):
        kernels.rotary_(x, cos, sin)
        return x
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def linear_rope_factor(scaling_type: str, factor: float) -> float:
    """The `RotaryEmbedding` linear factor of a config's rope scaling; ValueError for the
    scaling types the rotary does not implement."""
    if scaling_type == "default":
        return 1.0
    if scaling_type == "linear":
        return factor
    raise ValueError(
        f"rope scaling {scaling_type!r} is not supported for this architecture "
        "(supported: none, 'linear'); remove rope_scaling from config.json to run without it"
    )
