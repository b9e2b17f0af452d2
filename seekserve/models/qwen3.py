"""Qwen3 (dense) over the paged KV cache: Llama with a per-head RMSNorm on q and k (before
rope), no QKV bias by default, and a head_dim that need not be hidden_size / num_heads.

Parameter names follow Hugging Face's Qwen3ForCausalLM, with q/k/v and gate/up fused as in
`llama.py`. Layers that config.json marks "sliding_attention" (`use_sliding_window`) see the
last `sliding_window` positions only.
"""

from __future__ import annotations

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.attention import (
    QKNormAttention,
    Rope,
    StepMasks,
    layer_sliding_window,
    step_masks,
)
from seekserve.models.layers.causal_lm import CausalLM
from seekserve.models.layers.mlp import GatedMLP
from seekserve.models.layers.norm import RMSNorm, add_norm
from seekserve.models.layers.rotary import RotaryEmbedding, linear_rope_factor
from seekserve.models.llama import STACKED_PARAMS
from seekserve.runner.inputs import ModelInputs


class Qwen3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = QKNormAttention(
            cfg, RMSNorm, cfg.head_dim**-0.5, layer_sliding_window(cfg, layer_index)
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rope: Rope, masks: StepMasks
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), inputs, rope, masks)
        x, h = add_norm(x, attn, self.post_attention_layernorm)
        return x + self.mlp(h)


class Qwen3Model(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(cfg, index) for index in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen3ForCausalLM(CausalLM):
    stacked_params = STACKED_PARAMS

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen3Model(cfg)
        self.rotary = RotaryEmbedding(
            cfg.head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            linear_rope_factor(cfg.rope_scaling_type, cfg.rope_scaling_factor),
        )
        self.init_lm_head(cfg)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of every scheduled token: (T, hidden)."""
        x = self.model.embed_tokens(inputs.token_ids)
        rope = self.rotary(inputs.positions, x.dtype)  # once per step, shared by all layers
        masks = step_masks(inputs, {a.sliding_window for a in self.attention_layers})
        for layer in self.model.layers:
            x = layer(x, inputs, rope, masks)
        return self.model.norm(x)
