"""Owns the model, its KV cache tensors and the sampler; runs one batched step.

KV cache memory, all layers in one tensor:
    kv_cache: (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
                           └ 0 = K, 1 = V
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from seekserve.engine.outputs import SchedulerOutput
from seekserve.models.config import ModelArchConfig
from seekserve.runner.inputs import prepare_inputs
from seekserve.sampling.constraints import GrammarConstraint
from seekserve.sampling.sampler import Sampler, TokenLogprob
from seekserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def kv_bytes_per_block(cfg: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty(0, dtype=dtype).element_size()
    return (
        cfg.num_hidden_layers
        * 2
        * block_size
        * cfg.num_key_value_heads
        * cfg.head_dim
        * element_size
    )


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
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = torch.device(device)
        self.kv_cache = torch.zeros(
            (
                cfg.num_hidden_layers,
                2,
                num_blocks,
                block_size,
                cfg.num_key_value_heads,
                cfg.head_dim,
            ),
            dtype=dtype,
            device=self.device,
        )
        for index, layer in enumerate(model.attention_layers):
            layer.kv_cache = self.kv_cache[index]
        self.sampler = Sampler(seed, self.device)

    @torch.inference_mode()
    def compute_logits(self, output: SchedulerOutput) -> tuple[list[str], torch.Tensor]:
        """One forward pass; logits (S, vocab) fp32 for the requests that sample."""
        inputs = prepare_inputs(output, self.block_size).to(self.device)
        hidden = self.model(inputs)
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        return inputs.sample_request_ids, logits

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
        request_ids, logits = self.compute_logits(output)
        if not request_ids:
            return {}, {}
        token_ids, logprobs = self.sampler(
            logits,
            [params[rid] for rid in request_ids],
            [output_token_ids[rid] for rid in request_ids],
            [constraints.get(rid) for rid in request_ids] if constraints else None,
        )
        sampled = dict(zip(request_ids, token_ids, strict=True))
        return sampled, {rid: lp for rid, lp in zip(request_ids, logprobs, strict=True) if lp}
