"""Gemma 3 text model (Gemma3ForCausalLM; the language model of a multimodal gemma3
checkpoint) over the paged KV cache.

Differences from Llama, all from Hugging Face's modeling_gemma3.py:
* embeddings are multiplied by sqrt(hidden_size), rounded to the embedding dtype;
* RMSNorm weights are offsets from 1 (`GemmaRMSNorm`), four norms per layer: input,
  post-attention (on the attention output, before the residual add), pre-feedforward and
  post-feedforward; per-head q/k norms before rope;
* the MLP is gated GELU (tanh approximation);
* the attention scale is query_pre_attn_scalar**-0.5;
* layers interleave sliding-window attention (the last `sliding_window` positions, rope theta
  `rope_local_theta`) with full attention (rope theta `rope_theta`, maybe linearly scaled);
* optional tanh softcapping of attention scores and of the final logits.
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
from seekserve.models.layers.mlp import GatedMLP, gelu_tanh
from seekserve.models.layers.norm import GemmaRMSNorm
from seekserve.models.layers.rotary import RotaryEmbedding, linear_rope_factor
from seekserve.models.llama import STACKED_PARAMS
from seekserve.runner.inputs import ModelInputs


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, layer_index: int) -> None:
        super().__init__()
        scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        window = layer_sliding_window(cfg, layer_index)
        self.self_attn = QKNormAttention(
            cfg, GemmaRMSNorm, scale, window, cfg.attn_logit_softcapping
        )
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, gelu_tanh)
        self.input_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rope: Rope, masks: StepMasks
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), inputs, rope, masks)
        x = x + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.post_feedforward_layernorm(mlp)


class Gemma3Model(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(cfg, index) for index in range(cfg.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Gemma3ForCausalLM(CausalLM):
    stacked_params = STACKED_PARAMS

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        if cfg.hf_config.get("use_bidirectional_attention"):
            raise ValueError(
                "gemma3 with use_bidirectional_attention (an embedding model) is not supported"
            )
        self.config = cfg
        self.model = Gemma3Model(cfg)
        # full-attention layers: rope_theta (maybe linearly scaled); sliding: the local theta
        self.rotary = RotaryEmbedding(
            cfg.head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            linear_rope_factor(cfg.rope_scaling_type, cfg.rope_scaling_factor),
        )
        self.rotary_local = RotaryEmbedding(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_local_theta or cfg.rope_theta
        )
        self.init_lm_head(cfg)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of every scheduled token: (T, hidden)."""
        # once per step, shared by all layers of a kind
        embed = self.model.embed_tokens
        dtype = embed.weight.dtype
        ropes = {False: self.rotary(inputs.positions, dtype)}
        windows = {a.sliding_window for a in self.attention_layers}
        if windows != {None}:
            ropes[True] = self.rotary_local(inputs.positions, dtype)
        masks = step_masks(inputs, windows)
        # sqrt(hidden_size) rounded to the embedding dtype first, as the reference does
        scale = float(torch.tensor(self.config.hidden_size**0.5, dtype=dtype))
        x = embed(inputs.token_ids) * scale
        for layer in self.model.layers:
            x = layer(x, inputs, ropes[layer.self_attn.sliding_window is not None], masks)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(S, hidden) → (S, vocab) in fp32, softcapped when the config says so."""
        logits = self.lm_head(hidden).float()
        if cap := self.config.final_logit_softcapping:
            logits = torch.tanh(logits / cap) * cap
        return logits
