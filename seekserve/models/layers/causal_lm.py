"""The shell every decoder-only architecture here shares: `model` (embed_tokens, layers,
norm), `rotary`, and an LM head tied to the embedding when the config says so; the runner
hands a KV cache tensor to each of `attention_layers`; logits come out in fp32."""

from __future__ import annotations

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.runner.inputs import ModelInputs


class CausalLM(nn.Module):
    model: nn.Module
    rotary: nn.Module

    def init_lm_head(self, cfg: ModelArchConfig) -> None:
        """Call after `self.model` exists."""
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.model.layers]

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of every scheduled token: (T, hidden)."""
        x = self.model.embed_tokens(inputs.token_ids)
        rope = self.rotary(inputs.positions, x.dtype)  # once per step, shared by all layers
        for layer in self.model.layers:
            x = layer(x, inputs, rope)
        return self.model.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(S, hidden) → (S, vocab) in fp32."""
        return self.lm_head(hidden).float()
