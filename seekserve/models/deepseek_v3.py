"""DeepSeek V3 (and V2): multi-head latent attention over a paged latent cache, and MoE.

Multi-head latent attention (MLA) caches one small row per token and layer instead of
per-head K and V (`runner/model_runner.py` sizes the cache from `kv_lora_rank` and
`qk_rope_head_dim`):

    x ─ kv_a_proj_with_mqa ─┬─ latent (kv_lora_rank) ─ kv_a_layernorm ─┐
                            └─ k_rope (qk_rope_head_dim) ─ rope ───────┴─▶ cache row
    cache rows ─ kv_b_proj(latent) ─▶ per head: k_nope (qk_nope_head_dim), v (v_head_dim)
    per head:  k = k_nope ‖ k_rope (shared by all heads),  q = q_nope ‖ rope(q_rope)

At attention time each group gathers its requests' rows and expands them with kv_b_proj
("naive" MLA: no weight absorption), then runs one SDPA call, as `runner/attention.py` does
for standard attention.

Parameter names follow Hugging Face's DeepseekV3ForCausalLM checkpoints (per-expert
`mlp.experts.{i}.gate_proj` etc., as `save_pretrained` writes them), except that gate/up
projections are fused (`STACKED_PARAMS`). Settings beyond `ModelArchConfig`'s fields are read
from its `hf_config` (config.json) by `DeepseekSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.causal_lm import CausalLM
from seekserve.models.layers.mlp import GatedMLP
from seekserve.models.layers.moe import STACKED_PARAMS, RouterConfig, SparseMoE
from seekserve.models.layers.norm import RMSNorm
from seekserve.models.layers.yarn import (
    rope_parameters,
    yarn_factor,
    yarn_get_mscale,
    yarn_inv_freq,
)
from seekserve.runner.inputs import ModelInputs

Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True)
class DeepseekSettings:
    """The config.json fields of deepseek_v2 / deepseek_v3 that `ModelArchConfig` lacks."""

    q_lora_rank: int | None
    """None: queries come from one q_proj; else q_a_proj → q_a_layernorm → q_b_proj."""
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool
    """Rope pairs are adjacent dims (x0, x1), (x2, x3), … (DeepSeek's layout), not halves."""
    rope: dict[str, Any]
    """rope_parameters with rope_type set ("default" or "yarn")."""
    first_k_dense_replace: int
    """The first k layers have a dense MLP, the others MoE."""
    n_routed_experts: int
    n_shared_experts: int
    moe_intermediate_size: int
    router: RouterConfig

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> DeepseekSettings:
        is_v3 = cfg["model_type"] == "deepseek_v3"
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
        rope = rope_parameters(cfg)
        if rope["rope_type"] not in ("default", "yarn"):
            raise ValueError(f"rope type {rope['rope_type']!r} is not supported (default, yarn)")
        # V3 routes by sigmoid + correction bias over top-2-sum groups (topk_method noaux_tc);
        # V2 by softmax, greedy or over groups ranked by their best expert
        topk_method = cfg.get("topk_method") or ("noaux_tc" if is_v3 else "greedy")
        if topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
            raise ValueError(f"topk_method {topk_method!r} is not supported")
        is_grouped = topk_method != "greedy"
        num_experts = cfg.get("n_routed_experts") or 0
        router = RouterConfig(
            num_experts=num_experts,
            top_k=cfg.get("num_experts_per_tok") or 1,
            scoring="sigmoid" if topk_method == "noaux_tc" else "softmax",
            num_groups=(cfg.get("n_group") or 1) if is_grouped else 1,
            topk_groups=(cfg.get("topk_group") or 1) if is_grouped else 1,
            norm_topk_prob=bool(cfg.get("norm_topk_prob", is_v3)),
            routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        )
        return cls(
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_nope_head_dim=cfg["qk_nope_head_dim"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
            # V2 always pairs adjacent dims; V3 does unless config.json says otherwise
            rope_interleave=not is_v3 or bool(cfg.get("rope_interleave", True)),
            rope=rope,
            first_k_dense_replace=cfg.get("first_k_dense_replace") or 0,
            n_routed_experts=num_experts,
            n_shared_experts=cfg.get("n_shared_experts") or 0,
            moe_intermediate_size=cfg["moe_intermediate_size"],
            router=router,
        )


class DeepseekRotary(nn.Module):
    """cos/sin tables of the rope part, (max_position, qk_rope_head_dim / 2), with YaRN's
    attention factor folded in (as transformers does)."""

    def __init__(self, cfg: ModelArchConfig, settings: DeepseekSettings) -> None:
        super().__init__()
        self.dim = settings.qk_rope_head_dim
        self.max_position = cfg.max_position_embeddings
        self.theta = cfg.rope_theta
        self.rope = settings.rope
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the tables, e.g. after the module was built on the meta device."""
        if self.rope["rope_type"] == "yarn":
            inv_freq, attention_factor = yarn_inv_freq(
                self.dim, self.theta, self.rope, self.max_position
            )
        else:
            exponents = torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim
            inv_freq, attention_factor = 1.0 / (self.theta**exponents), 1.0
        freqs = torch.outer(torch.arange(self.max_position, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos() * attention_factor, persistent=False)
        self.register_buffer("sin", freqs.sin() * attention_factor, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> Rope:  # noqa: ARG002
        """cos, sin for every token: (T, 1, qk_rope_head_dim / 2) fp32 whatever `dtype`
        (`apply_rope` rotates in fp32)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, rope: Rope, interleave: bool) -> torch.Tensor:
    """x: (T, H, R). Interleaved pairs (x0, x1), (x2, x3), … come out de-interleaved (evens
    then odds), as transformers returns them; q and k get the same layout, so q·k is exact."""
    cos, sin = rope
    x32 = x.float()
    if interleave:
        x1, x2 = x32[..., 0::2], x32[..., 1::2]
    else:
        x1, x2 = x32.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelArchConfig, s: DeepseekSettings) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.settings = s
        self.qk_head_dim = s.qk_nope_head_dim + s.qk_rope_head_dim
        hidden, bias = cfg.hidden_size, cfg.attention_bias
        if s.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, self.num_heads * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, s.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(s.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(s.q_lora_rank, self.num_heads * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, s.kv_lora_rank + s.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(s.kv_lora_rank, 1e-6)
        self.kv_b_proj = nn.Linear(
            s.kv_lora_rank, self.num_heads * (s.qk_nope_head_dim + s.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * s.v_head_dim, hidden, bias=bias)
        self.scale = self.qk_head_dim**-0.5
        if s.rope["rope_type"] != "default" and s.rope.get("mscale_all_dim"):
            factor = yarn_factor(s.rope, cfg.max_position_embeddings)
            self.scale *= yarn_get_mscale(factor, s.rope["mscale_all_dim"]) ** 2
        # (1, num_blocks, block_size, 1, kv_lora_rank + qk_rope_head_dim); bound by the runner
        self.kv_cache = torch.empty(0)

    def forward(self, x: torch.Tensor, inputs: ModelInputs, rope: Rope) -> torch.Tensor:
        s, num_tokens = self.settings, x.shape[0]
        if s.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(num_tokens, self.num_heads, self.qk_head_dim)
        q_nope, q_rope = q.split([s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        q = torch.cat((q_nope, apply_rope(q_rope, rope, s.rope_interleave)), dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split(
            [s.kv_lora_rank, s.qk_rope_head_dim], dim=-1
        )
        k_rope = apply_rope(k_rope.unsqueeze(1), rope, s.rope_interleave).squeeze(1)
        rows = torch.cat((self.kv_a_layernorm(latent), k_rope), dim=-1)  # (T, C)
        cache = self.kv_cache.view(-1, rows.shape[-1])  # (num_slots, C)
        cache.index_copy_(0, inputs.slot_mapping, rows.to(cache.dtype))
        out = x.new_empty(num_tokens, self.num_heads, s.v_head_dim)
        for group in inputs.groups:
            k_g, v_g = self._expand(cache[group.kv_index])  # (B, H, max_kv, D_qk / D_v)
            q_g = q[group.q_index].transpose(1, 2)  # (B, H, max_q, D_qk)
            o_g = F.scaled_dot_product_attention(
                q_g, k_g, v_g, attn_mask=group.mask, scale=self.scale
            ).transpose(1, 2)  # (B, max_q, H, D_v)
            if group.is_decode:
                out[group.token_start : group.token_start + group.num_tokens] = o_g[:, 0]
            else:
                out[group.q_index[group.q_valid]] = o_g[group.q_valid]
        return self.o_proj(out.reshape(num_tokens, -1))

    def _expand(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache rows (B, N, C) → per-head k (B, H, N, D_qk) and v (B, H, N, D_v)."""
        s = self.settings
        batch, num_rows, _ = rows.shape
        latent, k_rope = rows.split([s.kv_lora_rank, s.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(latent).view(batch, num_rows, self.num_heads, -1)
        k_nope, v = kv.split([s.qk_nope_head_dim, s.v_head_dim], dim=-1)
        k_rope = k_rope.unsqueeze(2).expand(-1, -1, self.num_heads, -1)
        k = torch.cat((k_nope, k_rope), dim=-1)
        return k.transpose(1, 2), v.transpose(1, 2)


class DeepseekDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelArchConfig, s: DeepseekSettings, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLAttention(cfg, s)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module
        if index < s.first_k_dense_replace or not s.n_routed_experts:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)
        else:
            self.mlp = SparseMoE(
                cfg.hidden_size, s.moe_intermediate_size, s.n_shared_experts, s.router
            )

    def forward(self, x: torch.Tensor, inputs: ModelInputs, rope: Rope) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekModel(nn.Module):
    def __init__(self, cfg: ModelArchConfig, s: DeepseekSettings) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DeepseekDecoderLayer(cfg, s, index) for index in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DeepseekV3ForCausalLM(CausalLM):
    stacked_params = STACKED_PARAMS

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.config = cfg
        self.settings = DeepseekSettings.from_hf_config(cfg.hf_config)
        self.model = DeepseekModel(cfg, self.settings)
        self.rotary = DeepseekRotary(cfg, self.settings)
        self.init_lm_head(cfg)
