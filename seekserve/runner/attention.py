"""Paged attention, reference backend in plain PyTorch (CPU and CUDA).

Per layer: write this step's K/V into the cache slots, then for each attention group gather
the requests' K/V from their blocks into a padded batch and run one
`scaled_dot_product_attention` call with the group's mask (GQA without repeating K/V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seekserve.runner.inputs import ModelInputs


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """kv_cache: (2, num_blocks, block_size, Hkv, D); k, v: (T, Hkv, D). Writes in place."""
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])  # (2, num_slots, Hkv, D)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    inputs: ModelInputs,
    scale: float,
) -> torch.Tensor:
    """q: (T, H, D); k, v: (T, Hkv, D) of this step's tokens. Returns (T, H, D)."""
    write_kv(kv_cache, k, v, inputs.slot_mapping)
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    out = torch.empty_like(q)
    for group in inputs.groups:
        k_g = flat[0][group.kv_index].transpose(1, 2)  # (B, Hkv, max_kv, D)
        v_g = flat[1][group.kv_index].transpose(1, 2)
        q_g = q[group.q_index].transpose(1, 2)  # (B, H, max_q, D)
        o_g = F.scaled_dot_product_attention(
            q_g, k_g, v_g, attn_mask=group.mask, scale=scale, enable_gqa=True
        )  # (B, H, max_q, D)
        o_g = o_g.transpose(1, 2)  # (B, max_q, H, D)
        if group.is_decode:
            out[group.token_start : group.token_start + group.num_tokens] = o_g[:, 0]
        else:
            out[group.q_index[group.q_valid]] = o_g[group.q_valid]
    return out
