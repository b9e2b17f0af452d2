"""Mixture of experts with shared experts (DeepSeek V2/V3): router, routed experts, shared MLP.

Parameter names follow the Hugging Face checkpoints (`mlp.gate.weight`,
`mlp.gate.e_score_correction_bias`, `mlp.experts.{i}.*`, `mlp.shared_experts.*`), except that
each expert's gate_proj and up_proj are fused into `gate_up_proj` (the loader concatenates
them, see `STACKED_PARAMS`). Tokens arrive flat: (T, hidden).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seekserve.models.layers.mlp import GatedMLP

# our fused parameter → the checkpoint parameters it concatenates, in order (dim 0)
STACKED_PARAMS = {"gate_up_proj": ("gate_proj", "up_proj")}


@dataclass(frozen=True, slots=True)
class RouterConfig:
    num_experts: int
    top_k: int
    scoring: str
    """"sigmoid" (V3: scores + e_score_correction_bias choose, groups ranked by the sum of
    their top-2) or "softmax" (V2: groups ranked by their best score)."""
    num_groups: int
    """Experts are split into this many equal groups; only `topk_groups` of them are chosen
    from (1 group: plain top-k)."""
    topk_groups: int
    norm_topk_prob: bool
    """Renormalize the chosen experts' weights to sum to 1 (before the scaling factor)."""
    routed_scaling_factor: float


class Router(nn.Module):
    """Chooses `top_k` experts per token and their weights; computed in fp32."""

    def __init__(self, hidden_size: int, cfg: RouterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, hidden_size))
        if cfg.scoring == "sigmoid":
            # used to choose experts only, never in the weights; a parameter (not a buffer) so
            # the loader's name check expects it
            self.e_score_correction_bias = nn.Parameter(
                torch.zeros(cfg.num_experts), requires_grad=False
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, hidden) → weights (T, top_k) fp32, expert ids (T, top_k) int64."""
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())  # (T, E)
        if cfg.scoring == "sigmoid":
            scores = logits.sigmoid()
            choice = scores + self.e_score_correction_bias.float()
            grouped = choice.view(-1, cfg.num_groups, cfg.num_experts // cfg.num_groups)
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # (T, G)
            masked_value = float("-inf")
        else:
            scores = logits.softmax(dim=-1)
            choice = scores
            grouped = choice.view(-1, cfg.num_groups, cfg.num_experts // cfg.num_groups)
            group_scores = grouped.max(dim=-1).values  # (T, G)
            masked_value = 0.0
        if cfg.num_groups > 1:
            group_ids = group_scores.topk(cfg.topk_groups, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores).scatter_(1, group_ids, 1).bool()
            expert_mask = group_mask.repeat_interleave(cfg.num_experts // cfg.num_groups, dim=1)
            choice = choice.masked_fill(~expert_mask, masked_value)
        expert_ids = choice.topk(cfg.top_k, dim=-1, sorted=False)[1]  # (T, top_k)
        weights = scores.gather(1, expert_ids)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * cfg.routed_scaling_factor, expert_ids


class SparseMoE(nn.Module):
    """Routed experts (weighted by the router) + shared experts (every token)."""

    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_shared_experts: int,
        router: RouterConfig,
    ) -> None:
        super().__init__()
        self.gate = Router(hidden_size, router)
        self.experts = nn.ModuleList(
            GatedMLP(hidden_size, moe_intermediate_size) for _ in range(router.num_experts)
        )
        self.shared_experts = GatedMLP(hidden_size, moe_intermediate_size * num_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, expert_ids = self.gate(x)  # (T, top_k) each
        out = torch.zeros_like(x)
        # NOTE: one small matmul per expert that received tokens, experts in id order (the
        # order transformers sums them in); fine for tiny and CPU models, a grouped GEMM
        # kernel is the fast path for large ones.
        for expert_id in expert_ids.unique().tolist():
            token_index, slot = torch.where(expert_ids == expert_id)
            y = self.experts[expert_id](x[token_index])
            out.index_add_(0, token_index, (y * weights[token_index, slot, None]).to(out.dtype))
        return out + self.shared_experts(x)
