"""Self-attention with per-head q/k RMSNorm (qwen3, gemma3) over the paged KV cache.

One layer: fused qkv projection → per-head q/k norm → rotary → paged attention (the step's
causal masks, or the sliding-window masks the model built once for the step) → o_proj.
What differs between the architectures is passed in: the norm class, the attention scale,
the layer's sliding window and the attention logit softcap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.rotary import apply_rotary
from seekserve.runner.attention import paged_attention
from seekserve.runner.inputs import ModelInputs, sliding_window_masks

Rope = tuple[torch.Tensor, torch.Tensor]
# window size (None = full attention) → one mask per attention group, or None for the groups'
# own causal masks; built once per step by `step_masks`
StepMasks = dict[int | None, list[torch.Tensor] | None]


def layer_sliding_window(cfg: ModelArchConfig, layer_index: int) -> int | None:
    """The sliding window of one layer, None for a full-attention layer."""
    if cfg.layer_types and cfg.layer_types[layer_index] == "sliding_attention":
        return cfg.sliding_window
    return None


def step_masks(inputs: ModelInputs, windows: set[int | None]) -> StepMasks:
    """The attention masks of every window size the model's layers use, for this step."""
    return {w: None if w is None else sliding_window_masks(inputs, w) for w in windows}


class QKNormAttention(nn.Module):
    def __init__(
        self,
        cfg: ModelArchConfig,
        norm: Callable[[int, float], nn.Module],
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale, self.sliding_window, self.softcap = scale, sliding_window, softcap
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.q_norm = norm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = norm(self.head_dim, cfg.rms_norm_eps)
        # (2, num_blocks, block_size, Hkv, D); bound by the model runner
        self.kv_cache = torch.empty(0)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rope: Rope, masks: StepMasks
    ) -> torch.Tensor:
        """x: (T, hidden) → (T, hidden)."""
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(num_tokens, self.num_heads, self.head_dim))  # norm before rope
        k = self.k_norm(k.view(num_tokens, self.num_kv_heads, self.head_dim))
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, k, rope)
        out = paged_attention(
            q, k, v, self.kv_cache, inputs, self.scale, masks[self.sliding_window], self.softcap
        )  # (T, H, D)
        return self.o_proj(out.reshape(num_tokens, -1))
