"""Paged attention against plain softmax(QKᵀ)V per request: causal, sliding-window and
softcapped, on a mixed decode + prefill step."""

from __future__ import annotations

import pytest
import torch

from seekserve.engine.outputs import ScheduledRequest, SchedulerOutput
from seekserve.runner.attention import paged_attention
from seekserve.runner.inputs import prepare_inputs, sliding_window_masks

BLOCK_SIZE = 4
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 2, 8
# (request id, positions already in the cache, new tokens, block ids)
REQUESTS = [("d", 9, 1, [5, 2, 7]), ("p1", 0, 6, [0, 3]), ("p2", 5, 7, [1, 4, 6])]


def reference(q, k, v, window: int | None, softcap: float | None, scale: float):
    """One request: q (n, H, D) at the last n of the (L, Hkv, D) positions of k, v."""
    n, length = q.shape[0], k.shape[0]
    k = k.repeat_interleave(NUM_HEADS // NUM_KV_HEADS, dim=1)
    v = v.repeat_interleave(NUM_HEADS // NUM_KV_HEADS, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_pos = torch.arange(length - n, length).unsqueeze(-1)
    kv_pos = torch.arange(length)
    allowed = kv_pos <= q_pos
    if window is not None:
        allowed &= kv_pos > q_pos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _cache_and_step(requests, block_size: int, dim: int, dtype: torch.dtype):
    """A random history per request (start + n positions, K and V): the first `start` written
    to the request's blocks of an 8-block cache, the last n as this step's k, v; and q."""
    kv_cache = torch.zeros(2, 8, block_size, NUM_KV_HEADS, dim, dtype=dtype)
    history = {r: torch.randn(2, s + n, NUM_KV_HEADS, dim).to(dtype) for r, s, n, _ in requests}
    for rid, start, _, blocks in requests:
        for pos in range(start):
            slot = blocks[pos // block_size] * block_size + pos % block_size
            kv_cache.view(2, -1, NUM_KV_HEADS, dim)[:, slot] = history[rid][:, pos]
    k = torch.cat([history[r][0, s:] for r, s, _, _ in requests])
    v = torch.cat([history[r][1, s:] for r, s, _, _ in requests])
    q = torch.randn(k.shape[0], NUM_HEADS, dim).to(dtype)
    return kv_cache, history, q, k, v


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (3, None), (None, 1.5), (5, 1.5)])
def test_paged_attention_equals_plain_attention(window, softcap):
    torch.manual_seed(0)
    out = SchedulerOutput(
        scheduled=[
            ScheduledRequest(rid, [1] * n, start, blocks, True)
            for rid, start, n, blocks in REQUESTS
        ],
        preempted_request_ids=[],
    )
    inputs = prepare_inputs(out, BLOCK_SIZE)
    kv_cache, history, q, k, v = _cache_and_step(REQUESTS, BLOCK_SIZE, HEAD_DIM, torch.float32)
    masks = None if window is None else sliding_window_masks(inputs, window)
    got = paged_attention(q, k, v, kv_cache, inputs, 0.3, masks, softcap)
    flat = 0
    for rid, _, n, _ in REQUESTS:
        keys, values = history[rid]
        expected = reference(q[flat : flat + n], keys, values, window, softcap, 0.3)
        torch.testing.assert_close(got[flat : flat + n], expected, rtol=1e-5, atol=1e-5)
        flat += n


def test_bf16_prefill_groups_take_the_paged_prefill_kernel():
    """With the CPU kernels on, a bf16 step's prefill group (one request from position 0 and
    one after 5 cached positions) attends by `paged_prefill_attention` over the blocks in
    place, its decode group by `paged_decode_attention`; both within bf16 error of the plain
    fp32 attention per request."""
    from seekserve.runner import cpu_kernels

    assert cpu_kernels.enable(), "the CPU kernels did not build"
    kernels = cpu_kernels.get(torch.device("cpu"))
    if not kernels.prefill_attention_supported(
        torch.zeros(1, 4, 64, dtype=torch.bfloat16), torch.zeros(1, 2, 64, dtype=torch.bfloat16)
    ):
        pytest.skip("this CPU has no AVX512-BF16: the kernel is not built")
    torch.manual_seed(1)
    block_size, dim = 16, 64
    requests = [("d", 20, 1, [5, 2]), ("p1", 0, 30, [0, 3]), ("p2", 5, 40, [1, 4, 6])]
    out = SchedulerOutput(
        scheduled=[ScheduledRequest(r, [1] * n, s, b, True) for r, s, n, b in requests],
        preempted_request_ids=[],
    )
    inputs = prepare_inputs(out, block_size)
    kv_cache, history, q, k, v = _cache_and_step(requests, block_size, dim, torch.bfloat16)
    got = paged_attention(q, k, v, kv_cache, inputs, dim**-0.5)
    prefill = inputs.groups[1]
    assert not prefill.causal and prefill.q_lens.tolist() == [30, 40]
    direct = kernels.paged_prefill_attention(
        q[1:], kv_cache, prefill.block_table, prefill.kv_lens, prefill.q_lens, dim**-0.5
    )
    assert torch.equal(got[1:], direct)
    flat = 0
    for rid, _, n, _ in requests:
        keys, values = history[rid].float()
        expected = reference(q[flat : flat + n].float(), keys, values, None, None, dim**-0.5)
        torch.testing.assert_close(got[flat : flat + n].float(), expected, rtol=0, atol=2e-2)
        flat += n
