"""Llama architecture (also SmolLM2; qwen2 is llama + QKV bias) over the paged KV cache.

Parameter names follow Hugging Face's LlamaForCausalLM, so a safetensors directory and our
GGUF loader (which renames to these) fill the same `state_dict`. Every layer processes the
flat batch of all scheduled tokens of all requests at once: (T, hidden).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.norm import RMSNorm
from seekserve.models.layers.rotary import RotaryEmbedding
from seekserve.runner.attention import paged_attention
from seekserve.runner.inputs import ModelInputs


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        # (2, num_blocks, block_size, Hkv, D); bound by the model runner
        self.kv_cache = torch.empty(0)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rotary: RotaryEmbedding
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        q = self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = rotary(inputs.positions, q, k)
        out = paged_attention(q, k, v, self.kv_cache, inputs, self.scale)  # (T, H, D)
        return self.o_proj(out.reshape(num_tokens, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self, x: torch.Tensor, inputs: ModelInputs, rotary: RotaryEmbedding
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs, rotary)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[LlamaAttention]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of every scheduled token: (T, hidden)."""
        x = self.model.embed_tokens(inputs.token_ids)
        for layer in self.model.layers:
            x = layer(x, inputs, self.rotary)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(S, hidden) → (S, vocab) in fp32."""
        return self.lm_head(hidden).float()
