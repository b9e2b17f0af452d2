"""Paged attention, reference backend in plain PyTorch (CPU and CUDA).

Per layer: write this step's K/V into the cache slots, then for each attention group gather
the requests' K/V from their blocks into a padded batch and run one
`scaled_dot_product_attention` call with the group's mask (GQA without repeating K/V).
A sliding-window layer passes the step's narrowed masks instead; a layer with attention
logit softcapping (which SDPA cannot express) takes the plain softmax(QKᵀ)V path.
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
    masks: list[torch.Tensor] | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: (T, H, D); k, v: (T, Hkv, D) of this step's tokens. Returns (T, H, D).

    masks: one per group replacing the groups' causal masks (`sliding_window_masks`);
    softcap: scores become softcap * tanh(scores / softcap) before the mask and softmax."""
    write_kv(kv_cache, k, v, inputs.slot_mapping)
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    out = torch.empty_like(q)
    for index, group in enumerate(inputs.groups):
        mask = group.mask if masks is None else masks[index]
        k_g = flat[0][group.kv_index].transpose(1, 2)  # (B, Hkv, max_kv, D)
        v_g = flat[1][group.kv_index].transpose(1, 2)
        q_g = q[group.q_index].transpose(1, 2)  # (B, H, max_q, D)
        if softcap is None:
            o_g = F.scaled_dot_product_attention(
                q_g, k_g, v_g, attn_mask=mask, scale=scale, enable_gqa=True
            )  # (B, H, max_q, D)
        else:
            o_g = _softcapped_attention(q_g, k_g, v_g, mask, scale, softcap)
        o_g = o_g.transpose(1, 2)  # (B, max_q, H, D)
        if group.is_decode:
            out[group.token_start : group.token_start + group.num_tokens] = o_g[:, 0]
        else:
            out[group.q_index[group.q_valid]] = o_g[group.q_valid]
    return out


def _softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """q: (B, H, max_q, D); k, v: (B, Hkv, max_kv, D); mask: (B, 1, max_q, max_kv).
    Softmax in fp32, as the reference implementations do. Returns (B, H, max_q, D)."""
    num_repeats = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(num_repeats, dim=1)  # (B, H, max_kv, D)
    v = v.repeat_interleave(num_repeats, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, max_q, max_kv)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
