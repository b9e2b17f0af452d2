"""Paged attention, reference backend in plain PyTorch (CPU and CUDA).

Per layer: write this step's K/V into the cache slots, then per attention group one
`scaled_dot_product_attention` call (GQA without repeating K/V):

* decode group: on a CPU with SeekServe's kernels built (`runner/cpu_kernels.py`), one call
  that reads the K/V blocks in place; otherwise the requests' K/V are gathered block by block
  (one index op for K and V together) into (B, max_kv) for SDPA;
* a prefill from position 0 of a single request (`causal`): the chunk's own K/V, a plain
  causal mask, no gather (SDPA's causal kernel also skips the masked half); on a CPU with the
  kernels and bf16 head_dim 64/128, our flash kernel instead (`csrc/prefill_attention.cpp`:
  1,130 tokens, SmolLM2's heads, 2-core AMD EPYC without AMX: 2.3 against SDPA's 13.3 ms);
* any other prefill group (several requests, or one after its cached prefix or earlier
  chunks): on a CPU with the kernels and bf16 head_dim 64/128, the same flash kernel over
  K/V read from the blocks in place (`paged_prefill_attention`); otherwise queries padded
  through `q_index`, K/V gathered by blocks, the group's mask.

The mask goes in as the additive bias `ModelInputs.to` made once per step. A sliding-window
layer passes the step's narrowed masks instead; a layer with attention logit softcapping
(which SDPA cannot express) takes the plain softmax(QKᵀ)V path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seekserve.runner import cpu_kernels
from seekserve.runner.inputs import AttentionGroup, ModelInputs


def _rows_contiguous(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """(T, Hkv, D) with each token's heads side by side (any token stride), in `dtype`."""
    return x.dtype == dtype and x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """kv_cache: (2, num_blocks, block_size, Hkv, D); k, v: (T, Hkv, D). Writes in place."""
    kernels = cpu_kernels.get(kv_cache.device)
    rows_fit = _rows_contiguous(k, kv_cache.dtype) and _rows_contiguous(v, kv_cache.dtype)
    if kernels is not None and kv_cache.is_contiguous() and rows_fit:
        kernels.write_kv_(kv_cache, k, v, slot_mapping)  # one C++ loop of row copies
        return
    flat = kv_cache.view(2, -1, *kv_cache.shape[-2:])  # (2, num_slots, Hkv, D)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def gather_kv(kv_cache: torch.Tensor, group: AttentionGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's K and V: (B, Hkv, max_kv, D) each (views of one gathered copy)."""
    batch, max_blocks = group.block_table.shape
    blocks = kv_cache[:, group.block_table]  # (2, B, max_blocks, block_size, Hkv, D)
    kv = blocks.view(2, batch, max_blocks * kv_cache.shape[2], *kv_cache.shape[-2:])
    return kv[0].transpose(1, 2), kv[1].transpose(1, 2)


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
    kernels = cpu_kernels.get(q.device) if masks is None and softcap is None else None
    out = torch.empty_like(q)
    for index, group in enumerate(inputs.groups):
        start, stop = group.token_start, group.token_start + group.num_tokens
        if kernels is not None and group.is_decode:
            o_g = kernels.paged_decode_attention(
                q[start:stop].contiguous(), kv_cache, group.block_table, group.kv_lens, scale
            )
            if group.num_tokens == q.shape[0]:
                return o_g  # a decode-only step: the kernel's output is the output
            out[start:stop] = o_g
            continue
        if masks is None and softcap is None and group.causal:
            q_g, k_g = q[start:stop], k[start:stop]
            if kernels is not None and scale > 0 and kernels.prefill_attention_supported(q_g, k_g):
                o_g = kernels.prefill_attention(q_g, k_g, v[start:stop], scale)
                if group.num_tokens == q.shape[0]:
                    return o_g  # the step's only group: no copy into `out`
                out[start:stop] = o_g
                continue
            o_g = F.scaled_dot_product_attention(
                q_g.transpose(0, 1).unsqueeze(0),  # (1, H, n, D)
                k_g.transpose(0, 1).unsqueeze(0),
                v[start:stop].transpose(0, 1).unsqueeze(0),
                is_causal=True,
                scale=scale,
                enable_gqa=True,
            )  # (1, H, n, D)
            out[start:stop] = o_g[0].transpose(0, 1)
            continue
        if (
            kernels is not None
            and scale > 0
            and kv_cache.dtype == q.dtype
            and kv_cache.is_contiguous()
            and kernels.prefill_attention_supported(q, k)
        ):
            # several requests, or one after its cached prefix: the kernel reads their K/V
            # from the blocks in place (no gather, no padding, no mask)
            o_g = kernels.paged_prefill_attention(
                q[start:stop], kv_cache, group.block_table, group.kv_lens, group.q_lens, scale
            )
            if group.num_tokens == q.shape[0]:
                return o_g
            out[start:stop] = o_g
            continue
        if masks is not None:
            mask = masks[index]
        else:
            mask = group.mask if group.bias is None else group.bias
        k_g, v_g = gather_kv(kv_cache, group)  # (B, Hkv, max_kv, D)
        if group.is_decode:
            q_g = q[start:stop].unsqueeze(2)  # (B, H, 1, D)
        else:
            q_g = q[group.q_index].transpose(1, 2)  # (B, H, max_q, D)
        if softcap is None:
            o_g = F.scaled_dot_product_attention(
                q_g, k_g, v_g, attn_mask=mask, scale=scale, enable_gqa=True
            )  # (B, H, max_q, D)
        else:
            o_g = _softcapped_attention(q_g, k_g, v_g, mask, scale, softcap)
        if group.is_decode:
            out[start:stop] = o_g[:, :, 0]
        else:
            o_g = o_g.transpose(1, 2)  # (B, max_q, H, D)
            out[group.q_index[group.q_valid]] = o_g[group.q_valid]
    return out


def attend_sampling_rows(
    q: torch.Tensor, kv_cache: torch.Tensor, group: AttentionGroup, scale: float
) -> torch.Tensor:
    """q: (S, H, D) at the last position of each request of `group` (`ModelInputs.
    sample_group`: a decode group), whose K/V the cache already holds. Returns (S, H, D): the
    same attention those rows get in the step's own groups."""
    kernels = cpu_kernels.get(q.device)
    if kernels is not None:
        return kernels.paged_decode_attention(
            q.contiguous(), kv_cache, group.block_table, group.kv_lens, scale
        )
    k_g, v_g = gather_kv(kv_cache, group)  # (S, Hkv, max_kv, D)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k_g, v_g, attn_mask=group.mask, scale=scale, enable_gqa=True
    )  # (S, H, 1, D)
    return out[:, :, 0]


def _softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """q: (B, H, max_q, D); k, v: (B, Hkv, max_kv, D); mask: (B, 1, max_q, max_kv), bool or
    additive. Softmax in fp32, as the reference implementations do. Returns (B, H, max_q, D)."""
    num_repeats = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(num_repeats, dim=1)  # (B, H, max_kv, D)
    v = v.repeat_interleave(num_repeats, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, max_q, max_kv)
    scores = torch.tanh(scores / softcap) * softcap
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
