"""Owns the model, its KV cache tensors and the sampler; runs one batched step.

KV cache memory, all layers in one tensor; what a token keeps per layer is
`kv_token_shape(cfg)` = (num_planes, num_heads, dim):
    kv_cache: (num_layers, num_planes, num_blocks, block_size, num_heads, dim)
    standard attention:  (num_layers, 2, ..., num_kv_heads, head_dim)      planes: 0 = K, 1 = V
    latent attention:    (num_layers, 1, ..., 1, kv_lora_rank + qk_rope_head_dim)
                                                 └ normalized KV latent ‖ rope'd shared key
NOTE: the block dimension is always dim 2, so `kv_cache[:, :, block_id]` is one block of every
layer whatever the layout (the disk tier copies blocks in and out that way).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from seekserve.engine.outputs import SchedulerOutput
from seekserve.models.config import ModelArchConfig
from seekserve.runner import cpu_kernels
from seekserve.runner.inputs import prepare_inputs
from seekserve.sampling.constraints import GrammarConstraint
from seekserve.sampling.sampler import Sampler, TokenLogprob, is_plain_greedy
from seekserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def kv_token_shape(cfg: ModelArchConfig) -> tuple[int, int, int]:
    """What one token keeps in the cache of one layer: (num_planes, num_heads, dim).

    Standard attention keeps K and V: (2, num_kv_heads, head_dim). Multi-head latent attention
    (deepseek_v2/v3) keeps one row, the normalized KV latent followed by the rope'd key part
    shared by all heads, (1, 1, kv_lora_rank + qk_rope_head_dim); the attention layer expands
    per-head K and V from it when it attends.
    """
    if cfg.kv_lora_rank:
        return (1, 1, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    return (2, cfg.num_key_value_heads, cfg.head_dim)


def kv_bytes_per_block(cfg: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty(0, dtype=dtype).element_size()
    num_planes, num_heads, dim = kv_token_shape(cfg)
    return cfg.num_hidden_layers * num_planes * block_size * num_heads * dim * element_size


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        cfg: ModelArchConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        seed: int,
        cpu_kernels_enabled: bool = True,
    ) -> None:
        """`cpu_kernels_enabled`: use (and build, on first use) SeekServe's CPU kernels."""
        self.model = model
        self.block_size = block_size
        self.device = torch.device(device)
        num_planes, num_heads, dim = kv_token_shape(cfg)
        shape = (cfg.num_hidden_layers, num_planes, num_blocks, block_size, num_heads, dim)
        kernels = None
        if self.device.type == "cpu" and cpu_kernels_enabled and cpu_kernels.enable():
            kernels = cpu_kernels.get(self.device)
        if kernels is not None:  # on 2 MiB pages: decode attention reads it every step
            self.kv_cache = kernels.huge_pages_empty(list(shape), dtype).zero_()
        else:
            self.kv_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        for index, layer in enumerate(model.attention_layers):
            layer.kv_cache = self.kv_cache[index]
        self.sampler = Sampler(seed, self.device)
        if kernels is not None:
            build = getattr(model, "build_native_decoder", None)
            if build is not None:
                model.native_decoder = build(kernels)

    def _sample_hidden(self, output: SchedulerOutput) -> tuple[list[str], torch.Tensor]:
        """One forward pass; the hidden states (S, hidden) of the requests that sample."""
        inputs = prepare_inputs(output, self.block_size).to(self.device, self.kv_cache.dtype)
        sample_hidden = getattr(self.model, "sample_hidden", None)
        if sample_hidden is not None:
            return inputs.sample_request_ids, sample_hidden(inputs)
        return inputs.sample_request_ids, self.model(inputs)[inputs.logits_indices]

    @torch.inference_mode()
    def compute_logits(self, output: SchedulerOutput) -> tuple[list[str], torch.Tensor]:
        """One forward pass; logits (S, vocab) fp32 for the requests that sample."""
        request_ids, hidden = self._sample_hidden(output)
        return request_ids, self.model.compute_logits(hidden)

    @torch.inference_mode()
    def execute(
        self,
        output: SchedulerOutput,
        params: dict[str, SamplingParams],
        output_token_ids: dict[str, list[int]],
        constraints: dict[str, GrammarConstraint | None] | None = None,
    ) -> tuple[dict[str, int], dict[str, TokenLogprob]]:
        """Run the step and sample; returns request_id → sampled token id, and request_id →
        logprobs for the requests that asked for them."""
        request_ids, hidden = self._sample_hidden(output)
        if not request_ids:
            return {}, {}
        greedy = getattr(self.model, "greedy_token_ids", None)
        if greedy is not None and all(
            is_plain_greedy(params[rid], constraints.get(rid) if constraints else None)
            for rid in request_ids
        ):
            token_ids = greedy(hidden)
            if token_ids is not None:  # argmax over the LM head's output, no fp32 copy
                return dict(zip(request_ids, token_ids.tolist(), strict=True)), {}
        logits = self.model.compute_logits(hidden)
        token_ids, logprobs = self.sampler(
            logits,
            [params[rid] for rid in request_ids],
            [output_token_ids[rid] for rid in request_ids],
            [constraints.get(rid) for rid in request_ids] if constraints else None,
        )
        sampled = dict(zip(request_ids, token_ids, strict=True))
        return sampled, {rid: lp for rid, lp in zip(request_ids, logprobs, strict=True) if lp}
