"""Pure, CPU-testable conversion of a `SchedulerOutput` into the tensors of one forward pass.

The flat token dimension T holds every scheduled token of every request, in batch order
(decodes first). Attention runs per *group* of requests padded to a common shape, so a step
makes at most two attention calls per layer, however many requests it holds:

    group "decode":  requests with 1 new token     q: (B, 1)       kv: (B, max_kv)
    group "prefill": requests with >1 new tokens   q: (B, max_q)   kv: (B, max_kv)

Padding is indexed away: `q_index` maps (b, i) to a flat token (padding reads token 0 and
its output is dropped) and `block_table` names the cache blocks of request b, so kv position
j is slot block_table[b, j // block_size] * block_size + j % block_size (max_kv is a whole
number of blocks; the attention gathers whole blocks); `mask` allows query i of request b to
see kv j when j <= its position and j < the request's length. Sliding-window layers narrow it
once per step with `sliding_window_masks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from seekserve.engine.outputs import SchedulerOutput


@dataclass(frozen=True, slots=True)
class AttentionGroup:
    token_start: int
    """First flat token of the group; the group's tokens are contiguous."""
    num_tokens: int
    q_index: torch.Tensor
    """(B, max_q) int64: flat token index of each padded query (padding → token_start)."""
    q_valid: torch.Tensor
    """(B, max_q) bool: which padded queries are real."""
    block_table: torch.Tensor
    """(B, max_blocks) int64: the cache blocks of each request (padding → block 0); kv
    position j of request b lives in block block_table[b, j // block_size]."""
    mask: torch.Tensor
    """(B, 1, max_q, max_kv) bool, max_kv = max_blocks * block_size: True where attention is
    allowed."""
    kv_lens: torch.Tensor
    """(B,) int64: kv positions of each request (its position after this step + 1)."""
    q_lens: torch.Tensor
    """(B,) int64: new tokens of each request this step (its rows of the group, in order)."""
    is_decode: bool
    causal: bool
    """One request computing its tokens from position 0: the chunk's own K/V are all it
    attends to, with a plain causal mask (no gather, no padding)."""
    bias: torch.Tensor | None = None
    """`mask` as an additive bias (0 / -inf) in the compute dtype, made by `ModelInputs.to`:
    SDPA adds it instead of converting the bool mask in every layer."""

    @property
    def kv_index(self) -> torch.Tensor:
        """(B, max_kv) int64: cache slot of each kv position (padding → block 0's slots)."""
        batch, max_blocks = self.block_table.shape
        block_size = self.mask.shape[-1] // max_blocks
        offsets = torch.arange(block_size, device=self.block_table.device)
        return (self.block_table.unsqueeze(-1) * block_size + offsets).view(batch, -1)


@dataclass(frozen=True, slots=True)
class ModelInputs:
    token_ids: torch.Tensor
    """(T,) int64"""
    positions: torch.Tensor
    """(T,) int64: position of each token in its request."""
    slot_mapping: torch.Tensor
    """(T,) int64: cache slot (block_id * block_size + offset) each token's K/V is written to."""
    groups: list[AttentionGroup]
    logits_indices: torch.Tensor
    """(S,) int64: flat index of the last token of each request that samples this step."""
    sample_request_ids: list[str]
    """Request id of each row of the logits, in the same order."""
    sample_group: AttentionGroup | None = None
    """On a step with prefill chunks: the sampling rows (`logits_indices`, in order) as a
    decode group, each the last position of its request over all its K/V. A model whose last
    layer computes only the rows it outputs attends with it (`CausalLM.sample_hidden`)."""

    @property
    def is_decode_only(self) -> bool:
        """Every request of the step computes one token."""
        return len(self.groups) == 1 and self.groups[0].is_decode

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> ModelInputs:
        """Copy to the device (non-blocking; the source is plain CPU memory); with `dtype`,
        each group but a causal one also gets its mask as an additive bias in that dtype (a
        causal group attends with `is_causal` or the prefill kernel: a 1,130-token prompt's
        bias would be 2.6 MB filled for nothing)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        return ModelInputs(
            token_ids=move(self.token_ids),
            positions=move(self.positions),
            slot_mapping=move(self.slot_mapping),
            groups=[_move_group(g, move, dtype) for g in self.groups],
            logits_indices=move(self.logits_indices),
            sample_group=None
            if self.sample_group is None
            else _move_group(self.sample_group, move),
            sample_request_ids=self.sample_request_ids,
        )


def _move_group(
    g: AttentionGroup,
    move: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype | None = None,
) -> AttentionGroup:
    """`g` with its tensors moved; with `dtype` and unless causal, its mask also as a bias."""
    mask = move(g.mask)
    bias = None
    if dtype is not None and not g.causal:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        bias.masked_fill_(~mask, float("-inf"))
    return AttentionGroup(
        g.token_start,
        g.num_tokens,
        move(g.q_index),
        move(g.q_valid),
        move(g.block_table),
        mask,
        move(g.kv_lens),
        move(g.q_lens),
        g.is_decode,
        g.causal,
        bias,
    )


def _slots(block_ids: list[int], start: int, stop: int, block_size: int) -> list[int]:
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, stop)]


def _build_group(
    chunks: list[tuple[int, int, int, list[int]]], token_start: int, block_size: int
) -> AttentionGroup:
    """chunks: (flat_start, start_position, num_new_tokens, block_ids) per request. Python
    lists first, one tensor each at the end: the cost grows with blocks, not tokens."""
    max_q = max(n for _, _, n, _ in chunks)
    q_index, q_pos, num_new, kv_len, blocks = [], [], [], [], []
    for flat_start, pos, n, block_ids in chunks:
        padding = max_q - n
        q_index.append([*range(flat_start, flat_start + n), *[token_start] * padding])
        q_pos.append([*range(pos, pos + n), *[0] * padding])  # padding attends to kv 0 only
        num_new.append(n)
        kv_len.append(pos + n)
        blocks.append(block_ids[: -(-(pos + n) // block_size)])
    max_blocks = max(len(b) for b in blocks)
    block_table = [b + [0] * (max_blocks - len(b)) for b in blocks]
    q_pos_t = torch.tensor(q_pos, dtype=torch.int64)  # (B, max_q)
    kv_len_t = torch.tensor(kv_len, dtype=torch.int64)
    kv_pos = torch.arange(max_blocks * block_size).view(1, 1, -1)
    mask = (kv_pos <= q_pos_t.unsqueeze(-1)) & (kv_pos < kv_len_t.view(-1, 1, 1))
    q_valid = torch.arange(max_q).view(1, -1) < torch.tensor(num_new).view(-1, 1)
    return AttentionGroup(
        token_start=token_start,
        num_tokens=sum(num_new),
        q_index=torch.tensor(q_index, dtype=torch.int64),
        q_valid=q_valid,
        block_table=torch.tensor(block_table, dtype=torch.int64),
        mask=mask.unsqueeze(1),
        kv_lens=kv_len_t,
        q_lens=torch.tensor(num_new, dtype=torch.int64),
        is_decode=max_q == 1,
        causal=max_q > 1 and len(chunks) == 1 and chunks[0][1] == 0,
    )


def sliding_window_masks(inputs: ModelInputs, window: int) -> list[torch.Tensor]:
    """Each group's mask narrowed to a sliding window: the query at position p sees the kv
    positions (p - window, p] only; padding queries keep their mask (no row is all False).
    Depends on the step alone, so a model builds it once per step per window size (on the
    inputs' device) and hands it to all its sliding layers. One (B, 1, max_q, max_kv) bool
    tensor per group, in group order.

        window 3, query at position 5:   kv position  0 1 2 3 4 5 6
                                         allowed      . . . x x x .
    """
    masks = []
    for group in inputs.groups:
        q_pos = inputs.positions[group.q_index]  # (B, max_q)
        kv_pos = torch.arange(group.mask.shape[-1], device=q_pos.device)  # (max_kv,)
        in_window = kv_pos > (q_pos - window).unsqueeze(-1)  # (B, max_q, max_kv)
        in_window |= ~group.q_valid.unsqueeze(-1)
        masks.append(group.mask & in_window.unsqueeze(1))
    return masks


def prepare_inputs(output: SchedulerOutput, block_size: int) -> ModelInputs:
    """Build the forward pass inputs of one step (CPU tensors)."""
    token_ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    logits_indices: list[int] = []
    sample_ids: list[str] = []
    decode_chunks: list[tuple[int, int, int, list[int]]] = []
    prefill_chunks: list[tuple[int, int, int, list[int]]] = []
    for s in output.scheduled:
        flat_start, stop = len(token_ids), s.start_position + s.num_tokens
        token_ids.extend(s.token_ids)
        positions.extend(range(s.start_position, stop))
        slot_mapping.extend(_slots(s.block_ids, s.start_position, stop, block_size))
        chunk = (flat_start, s.start_position, s.num_tokens, s.block_ids)
        (decode_chunks if s.num_tokens == 1 else prefill_chunks).append(chunk)
        if s.needs_sample:
            logits_indices.append(len(token_ids) - 1)
            sample_ids.append(s.request_id)
    groups = []
    if decode_chunks:
        groups.append(_build_group(decode_chunks, 0, block_size))
    sample_group = None
    if prefill_chunks:
        groups.append(_build_group(prefill_chunks, len(decode_chunks), block_size))
        # row j: request j's last position (sampling requests, in logits order)
        sampling = [s for s in output.scheduled if s.needs_sample]
        if sampling:
            last = [
                (j, s.start_position + s.num_tokens - 1, 1, s.block_ids)
                for j, s in enumerate(sampling)
            ]
            sample_group = _build_group(last, 0, block_size)
    return ModelInputs(
        token_ids=torch.tensor(token_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64),
        groups=groups,
        logits_indices=torch.tensor(logits_indices, dtype=torch.int64),
        sample_request_ids=sample_ids,
        sample_group=sample_group,
    )
