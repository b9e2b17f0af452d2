"""The shell every decoder-only architecture here shares: `model` (embed_tokens, layers,
norm), `rotary`, and an LM head tied to the embedding when the config says so; the runner
hands a KV cache tensor to each of `attention_layers`; logits come out in fp32.

An architecture can also mirror its layers in the CPU kernels' native `Decoder`
(`build_native_decoder`; `runner/csrc/decoder.cpp`): the runner sets `native_decoder` when
the kernels are on, and steps whose attention groups the kernels take (decodes; bf16 prefill
chunks where `native_prefill`) then run all layers in one call without Python."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.runner import cpu_kernels
from seekserve.runner.inputs import AttentionGroup, ModelInputs
from seekserve.sampling.sampler import argmax


class CausalLM(nn.Module):
    model: nn.Module
    rotary: nn.Module
    native_decoder: Any = None
    """The kernels' `Decoder` over this model's weights and KV cache, or None."""
    native_prefill: bool = False
    """Whether `native_decoder` also takes steps with prefill chunks: the kernels' prefill
    attention takes this model's dtype, heads and cache (set by `build_native_decoder`)."""

    def init_lm_head(self, cfg: ModelArchConfig) -> None:
        """Call after `self.model` exists."""
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def attention_layers(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.model.layers]

    def build_native_decoder(self, kernels: Any) -> Any:  # noqa: ARG002
        """The CPU kernels' `Decoder` computing this model's decode steps, built after the
        runner bound the KV caches; None where the architecture (or a layer) has none."""
        return None

    def sample_hidden(self, inputs: ModelInputs) -> torch.Tensor:
        """Hidden states of the step's sampling rows (`inputs.logits_indices`): (S, hidden).

        On a step with prefill chunks, where the layers are this class's and the last one can
        (`takes_output_rows`), that layer writes every token's K/V but attends, projects and
        runs its MLP for the sampling rows only, as llama.cpp prunes its last layer: a
        1,130-token prompt then skips 1/30 of SmolLM2's attention and MLP work."""
        layers = self.model.layers
        if (
            inputs.sample_group is not None
            and type(self).forward is CausalLM.forward
            and getattr(layers[-1], "takes_output_rows", False)
        ):
            return self(inputs, rows=inputs.logits_indices)
        return self(inputs)[inputs.logits_indices]

    def forward(self, inputs: ModelInputs, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of every scheduled token: (T, hidden); with `rows` (flat token
        indices; the last layer must take them: `sample_hidden`), of those rows only."""
        x = self.model.embed_tokens(inputs.token_ids)
        rope = self.rotary(inputs.positions, x.dtype)  # once per step, shared by all layers
        native = self._native_groups(inputs, x.device, rows is not None)
        if native is not None:
            groups, sample = native
            return self.native_decoder.forward(
                x, groups, inputs.slot_mapping, *rope, rows=rows, sample=sample
            )
        *layers, last = self.model.layers
        for layer in layers:
            x = layer(x, inputs, rope)
        x = last(x, inputs, rope) if rows is None else last(x, inputs, rope, rows)
        return self.model.norm(x)

    def _native_groups(
        self, inputs: ModelInputs, device: torch.device, pruned: bool
    ) -> tuple[list[Any], Any] | None:
        """The step's attention groups as the native decoder's `StepGroup`s (kind 0: decode,
        1: one request's chunk from position 0, 2: chunks after cached positions) and, when
        the last layer is `pruned` to the sampling rows, `inputs.sample_group` as one; None
        where the step keeps the Python layers."""
        kernels = cpu_kernels.get(device)
        if self.native_decoder is None or kernels is None:
            return None
        if not self.native_prefill and not inputs.is_decode_only:
            return None

        def step_group(group: AttentionGroup, kind: int) -> Any:
            return kernels.StepGroup(
                group.token_start,
                group.num_tokens,
                kind,
                group.block_table,
                group.kv_lens,
                group.q_lens,
            )

        groups = [
            step_group(group, kind=0 if group.is_decode else 1 if group.causal else 2)
            for group in inputs.groups
        ]
        return groups, step_group(inputs.sample_group, kind=0) if pruned else None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(S, hidden) → (S, vocab) in fp32."""
        return self.lm_head(hidden).float()

    def greedy_token_ids(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """(S,) int64: the argmax of `compute_logits(hidden)` rows, taken over the LM head's
        own output (bf16 widens to fp32 exactly: same values, same ties), which skips the fp32
        copy (64 rows of 49,152 logits: 6 MB read, 12 MB written, then read again). None
        where an architecture's logits are more than the head's output (its own
        `compute_logits`: softcapping, scaling)."""
        if type(self).compute_logits is not CausalLM.compute_logits:
            return None
        return argmax(self.lm_head(hidden))
