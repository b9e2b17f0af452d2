"""Llama architecture (also SmolLM2; qwen2 is llama + QKV bias) over the paged KV cache.

Parameter names follow Hugging Face's LlamaForCausalLM except that q/k/v and gate/up are
fused into one matrix each (`STACKED_PARAMS`; the loader concatenates the checkpoint's
tensors), which halves the number of matmuls a decode step launches. Every layer processes
the flat batch of all scheduled tokens of all requests at once: (T, hidden).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.causal_lm import CausalLM
from seekserve.models.layers.linear import native_linear
from seekserve.models.layers.mlp import GatedMLP
from seekserve.models.layers.norm import RMSNorm, add_norm
from seekserve.models.layers.rotary import RotaryEmbedding, rotate
from seekserve.runner.attention import attend_sampling_rows, paged_attention, write_kv
from seekserve.runner.inputs import ModelInputs

Rope = tuple[torch.Tensor, torch.Tensor]

# our fused parameter → the checkpoint parameters it concatenates, in order (dim 0)
STACKED_PARAMS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        # (2, num_blocks, block_size, Hkv, D); bound by the model runner
        self.kv_cache = torch.empty(0)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rope: Rope, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T, hidden) → (T, hidden); with `rows` (the step's sampling rows, `inputs.
        sample_group`), every token's K/V still goes to the cache but only those rows attend:
        (len(rows), hidden)."""
        num_tokens = x.shape[0]
        qk, v = self.qkv_proj(x).split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        # q and k heads side by side: one rotary call for both
        qk = rotate(qk.view(num_tokens, self.num_heads + self.num_kv_heads, self.head_dim), rope)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if rows is None:
            out = paged_attention(q, k, v, self.kv_cache, inputs, self.scale)  # (T, H, D)
        else:
            assert inputs.sample_group is not None
            write_kv(self.kv_cache, k, v, inputs.slot_mapping)
            out = attend_sampling_rows(q[rows], self.kv_cache, inputs.sample_group, self.scale)
        return self.o_proj(out.reshape(out.shape[0], -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    takes_output_rows = True
    """`forward` can compute only some rows' outputs (`CausalLM.sample_hidden`)."""

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rope: Rope, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), inputs, rope, rows)
        if rows is not None:
            x = x[rows]
        x, h = add_norm(x, attn, self.post_attention_layernorm)
        return x + self.mlp(h)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(CausalLM):
    stacked_params = STACKED_PARAMS

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.init_lm_head(cfg)

    def build_native_decoder(self, kernels: Any) -> Any:
        cfg = self.config
        decoder = kernels.Decoder(
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            self.model.norm.eps,
            cfg.head_dim**-0.5,
            self.model.norm.weight.detach(),
        )
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            modules = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            qkv, o, gate_up, down = (native_linear(m, kernels) for m in modules)
            if None in (qkv, o, gate_up, down) or mlp.activation is not F.silu:
                return None
            decoder.add_layer(
                layer.input_layernorm.weight.detach(),
                qkv,
                o,
                layer.post_attention_layernorm.weight.detach(),
                gate_up,
                down,
                attn.kv_cache,
            )
        # prefill chunks too, where runner/attention.py would attend them by the same kernels
        dtype = self.model.embed_tokens.weight.dtype
        q, k = (
            torch.empty(0, n, cfg.head_dim, dtype=dtype)
            for n in (cfg.num_attention_heads, cfg.num_key_value_heads)
        )
        self.native_prefill = kernels.prefill_attention_supported(q, k) and all(
            layer.self_attn.kv_cache.dtype == dtype and layer.self_attn.kv_cache.is_contiguous()
            for layer in self.model.layers
        )
        return decoder
