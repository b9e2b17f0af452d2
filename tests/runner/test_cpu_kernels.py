"""SeekServe's CPU kernels against the PyTorch path they replace (the slow reference):
paged decode attention against gather + SDPA, the norms and the activation against the
transformers arithmetic. The kernels build on first use (g++ and ninja; ~2 min once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seekserve.runner import cpu_kernels


@pytest.fixture(scope="module")
def kernels():
    assert cpu_kernels.enable(), "the CPU kernels did not build (see the log for the reason)"
    module = cpu_kernels.get(torch.device("cpu"))
    assert module is not None
    return module


def reference_decode(q, kv_cache, block_table, kv_lens, scale):
    """Gather whole blocks, mask positions >= kv_len, SDPA with GQA: (B, H, D)."""
    batch, max_blocks = block_table.shape
    block_size = kv_cache.shape[2]
    kv = kv_cache[:, block_table].reshape(2, batch, max_blocks * block_size, *kv_cache.shape[-2:])
    mask = torch.arange(max_blocks * block_size).view(1, -1) < kv_lens.view(-1, 1)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        kv[0].transpose(1, 2),
        kv[1].transpose(1, 2),
        attn_mask=mask.view(batch, 1, 1, -1),
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, 0]


@pytest.mark.parametrize(
    ("dtype", "head_dim", "block_size", "tolerance"),
    [
        (torch.float32, 64, 16, 1e-5),  # the specialised kernel (SmolLM2's shape)
        (torch.float32, 24, 4, 1e-5),  # the generic one
        (torch.bfloat16, 64, 16, 1e-2),
        (torch.bfloat16, 128, 16, 1e-2),
    ],
)
def test_paged_decode_attention_equals_gather_and_sdpa(
    kernels, dtype, head_dim, block_size, tolerance
):
    generator = torch.Generator().manual_seed(0)
    num_blocks, num_heads, num_kv_heads = 40, 6, 2
    kv_cache = torch.randn(
        2, num_blocks, block_size, num_kv_heads, head_dim, generator=generator
    ).to(dtype)
    kv_lens = torch.tensor([1, block_size, block_size + 1, 3 * block_size - 1, 5])
    max_blocks = 3
    # each request's blocks scattered over the pool; unused table entries are block 0
    block_table = torch.randperm(num_blocks, generator=generator)[: 5 * max_blocks].view(5, -1)
    q = torch.randn(5, num_heads, head_dim, generator=generator).to(dtype)
    ours = kernels.paged_decode_attention(q, kv_cache, block_table, kv_lens, 0.3)
    expected = reference_decode(q, kv_cache, block_table, kv_lens, 0.3)
    torch.testing.assert_close(ours, expected, rtol=tolerance, atol=tolerance)
    # request 0 attends to its single position: the output is exactly that V row
    v_row = kv_cache[1, block_table[0, 0], 0]  # (Hkv, D)
    torch.testing.assert_close(ours[0], v_row.repeat_interleave(3, dim=0).to(dtype))


@pytest.mark.parametrize(("head_dim", "group", "gain"), [(64, 3, 1.0), (64, 3, 8.0), (128, 4, 8.0)])
def test_paged_decode_attention_in_bf16_is_as_close_to_fp32_as_sdpa(kernels, head_dim, group, gain):
    """The bf16 kernel (p·V on pairs of positions, probabilities rounded to bf16) against the
    fp32 result: within SDPA's own bf16 error plus one bf16 rounding. Odd and even lengths
    (the last pair of a block half past its end), 1 to 7 blocks; with `gain`, scores spread
    so that the running max moves and earlier blocks rescale. Slots past a request's length
    hold NaN, which must not reach the output."""
    generator = torch.Generator().manual_seed(head_dim + int(gain))
    num_kv_heads, block_size, num_blocks = 2, 16, 64
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    kv_lens = torch.tensor([1, 2, 15, 16, 17, 33, 100, 111])
    batch, max_blocks = len(kv_lens), 7
    block_table = torch.randperm(num_blocks, generator=generator)[: batch * max_blocks]
    block_table = block_table.view(batch, max_blocks)
    for b, length in enumerate(kv_lens.tolist()):  # stale slots after each request's end
        last, used = divmod(length, block_size)
        if used:
            kv_cache[:, block_table[b, last], used:] = float("nan")
    kv_cache = kv_cache.to(torch.bfloat16)
    q = (torch.randn(batch, group * num_kv_heads, head_dim, generator=generator) * gain).to(
        torch.bfloat16
    )
    scale = head_dim**-0.5
    ours = kernels.paged_decode_attention(q, kv_cache, block_table, kv_lens, scale)
    assert ours.dtype == torch.bfloat16 and not ours.isnan().any()
    clean = kv_cache.nan_to_num(0.0)  # SDPA's masked positions still multiply V: 0 · NaN
    exact = reference_decode(q.float(), clean.float(), block_table, kv_lens, scale)
    sdpa_error = reference_decode(q, clean, block_table, kv_lens, scale).float() - exact
    assert (ours.float() - exact).abs().max() <= sdpa_error.abs().max() + 2**-8


def test_paged_decode_attention_rejects_mismatched_tensors(kernels):
    q = torch.randn(2, 4, 8)
    kv_cache = torch.randn(2, 4, 4, 2, 8)
    with pytest.raises(RuntimeError, match="block_table must be"):
        kernels.paged_decode_attention(
            q, kv_cache, torch.zeros(3, 1).long(), torch.ones(2).long(), 1.0
        )
    with pytest.raises(RuntimeError, match="dtypes differ"):
        kernels.paged_decode_attention(
            q.bfloat16(), kv_cache, torch.zeros(2, 1).long(), torch.ones(2).long(), 1.0
        )


def transformers_rms_norm(x, weight, eps):
    """LlamaRMSNorm.forward: fp32 inside, rounded to the input dtype, then weight * it."""
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_and_add_rms_norm_follow_transformers(kernels, dtype):
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(37, 576, generator=generator) * 3).to(dtype)
    delta = torch.randn(37, 576, generator=generator).to(dtype)
    weight = torch.rand(576, generator=generator).to(dtype) + 0.5
    # fp32: 1/sqrt vs rsqrt may differ in the last bit; bf16: that bit rarely survives rounding
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    expected = transformers_rms_norm(x, weight, 1e-5)
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-5), expected, **tolerance)
    # (T, heads, D) inputs are normed per head (the q/k norms of qwen3 and gemma3)
    heads = x.view(37, 9, 64)
    torch.testing.assert_close(
        kernels.rms_norm(heads, weight[:64].contiguous(), 1e-5),
        transformers_rms_norm(heads, weight[:64], 1e-5),
        **tolerance,
    )
    residual = x.clone()
    normed = kernels.add_rms_norm(residual, delta, weight, 1e-5)
    assert torch.equal(residual, x + delta)  # updated in place, rounded as `x + delta`
    torch.testing.assert_close(normed, transformers_rms_norm(x + delta, weight, 1e-5), **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul_follows_transformers(kernels, dtype):
    gate_up = (torch.randn(9, 2 * 1536, generator=torch.Generator().manual_seed(2)) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(kernels.silu_and_mul(gate_up), F.silu(gate) * up, **tolerance)


def test_disabled_kernels_are_not_handed_out(kernels):
    try:
        assert not cpu_kernels.enable(False)
        assert cpu_kernels.get(torch.device("cpu")) is None
    finally:
        assert cpu_kernels.enable(True)
    assert cpu_kernels.get(torch.device("meta")) is None


@pytest.mark.parametrize("dim", [16, 64])  # 64: bf16 heads take the 16-wide vector path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_in_place_follows_transformers(kernels, dtype, dim):
    """The q and k heads of a fused qkv output (rows strided by the v part too), rotated in
    place, equal transformers' `apply_rotary_pos_emb` arithmetic in the same dtype."""
    from seekserve.models.layers.rotary import RotaryEmbedding

    generator = torch.Generator().manual_seed(3)
    qkv = (torch.randn(7, (4 + 2 + 2) * dim, generator=generator) * 4).to(dtype)
    cos, sin = RotaryEmbedding(dim, 64, 10000.0)(torch.tensor([0, 1, 2, 5, 9, 31, 63]), dtype)
    qk = qkv[:, : 6 * dim].view(7, 6, dim)
    half = torch.cat((-qk[..., dim // 2 :], qk[..., : dim // 2]), dim=-1)
    expected = qk * cos + half * sin
    v_before = qkv[:, 6 * dim :].clone()
    kernels.rotary_(qk, cos, sin)
    # bf16: bitwise (every product is rounded as transformers rounds it); fp32: the compiler
    # may fuse a multiply-add (one rounding instead of two)
    tolerance = 1e-6 if dtype == torch.float32 else 0.0
    torch.testing.assert_close(qk, expected, rtol=tolerance, atol=tolerance)
    assert torch.equal(qkv[:, 6 * dim :], v_before)  # only the q and k heads are touched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), [(64, 48), (70, 37), (5, 3)])
def test_int8_linear_equals_the_dequantized_product(kernels, dtype, out_features, in_features):
    """Any N (tiles of 32 outputs, the last one padded) and any K (odd: the tail of the
    two-rows-at-a-time loop), 1 to 9 rows (groups of 4 rows and their remainders)."""
    generator = torch.Generator().manual_seed(out_features)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator)
    weight = weight.to(torch.int8)
    scales = torch.rand(out_features, generator=generator) / 50
    bias = torch.randn(out_features, generator=generator).to(dtype)
    packed = kernels.pack_int8(weight)
    assert packed.shape == (-(-out_features // 32), in_features, 32)
    for rows in range(1, 10):
        x = torch.randn(rows, in_features, generator=generator).to(dtype)
        expected = (x.float() @ weight.float().T) * scales
        ours = kernels.int8_linear(x, packed, scales, None)
        assert ours.dtype == dtype and ours.shape == (rows, out_features)
        # fp32 sums in another order; bf16: one rounding of the result
        tolerance = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(ours.float(), expected, rtol=tolerance, atol=1e-4)
        with_bias = kernels.int8_linear(x, packed, scales, bias)
        torch.testing.assert_close(
            with_bias.float(), expected + bias.float(), rtol=tolerance, atol=1e-4
        )


@pytest.mark.parametrize(("out_features", "in_features"), [(33, 32), (96, 576), (40, 1536)])
def test_int8_linear_amx_rows_equal_the_dequantized_product(kernels, out_features, in_features):
    """bf16 x of 3 to 64 rows with K a multiple of 32 takes AMX's tile products where the CPU
    has them (int8 widened to bf16 exactly; 32 rows a pass, padded to 16); 65 rows and up,
    the vector path again. fp32 sums, one rounding."""
    generator = torch.Generator().manual_seed(in_features)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator)
    weight = weight.to(torch.int8)
    scales = torch.rand(out_features, generator=generator) / 50
    bias = torch.randn(out_features, generator=generator).to(torch.bfloat16)
    packed = kernels.pack_int8(weight)
    for rows in (3, 15, 16, 17, 31, 32, 33, 48, 49, 64, 65):
        x = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
        expected = (x.float() @ weight.float().T) * scales + bias.float()
        ours = kernels.int8_linear(x, packed, scales, bias)
        assert ours.shape == (rows, out_features)
        torch.testing.assert_close(ours.float(), expected, rtol=8e-3, atol=1e-3)


def test_int8_linear_rejects_mismatched_tensors(kernels):
    packed = kernels.pack_int8(torch.zeros(40, 16, dtype=torch.int8))
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="int8 tensor"):
        kernels.pack_int8(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="K = x.size"):
        kernels.int8_linear(torch.randn(2, 8), packed, torch.ones(40), None)
    with pytest.raises(RuntimeError, match="scales must be"):
        kernels.int8_linear(x, packed, torch.ones(70), None)
    with pytest.raises(RuntimeError, match="bias must be"):
        kernels.int8_linear(x, packed, torch.ones(40), torch.ones(40).bfloat16())


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(n, H, D) from (n, H, D), (n, Hkv, D) ×2 by PyTorch's SDPA, in q's dtype."""
    heads = lambda t: t.transpose(0, 1).unsqueeze(0)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(
        heads(q), heads(k), heads(v), is_causal=True, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1)


@pytest.mark.parametrize(
    ("n", "heads", "kv_heads", "dim", "gain"),
    [
        (1, 9, 3, 64, 1.0),
        (5, 9, 3, 64, 1.0),
        (33, 9, 3, 64, 1.0),
        (100, 4, 4, 64, 1.0),
        (70, 8, 2, 128, 1.0),
        (300, 9, 3, 64, 1.0),
        (129, 9, 3, 64, 8.0),
        (200, 8, 2, 128, 8.0),
    ],
)
def test_prefill_attention_is_as_close_to_fp32_as_sdpa_in_bf16(
    kernels, n, heads, kv_heads, dim, gain
):
    """Any length (steps of 64 keys, blocks of 16 positions, rows padded to 6), GQA groups of
    1-4, head_dim 64 and 128; q, k, v as strided views of one fused qkv tensor, as the model
    passes them; with `gain`, scores spread wide enough that the running max changes and rows
    rescale. bf16 in and out, fp32 scores and softmax: within SDPA's own bf16 error of the fp32
    result, plus one bf16 rounding."""
    generator = torch.Generator().manual_seed(n)
    qkv = torch.randn(n, heads + 2 * kv_heads, dim, generator=generator).to(torch.bfloat16)
    qkv[:, :heads] *= gain
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    scale = dim**-0.5
    ours = kernels.prefill_attention(q, k, v, scale)
    assert ours.shape == (n, heads, dim) and ours.dtype == torch.bfloat16
    exact = _causal_sdpa(q.float(), k.float(), v.float(), scale)
    sdpa_error = (_causal_sdpa(q, k, v, scale).float() - exact).abs().max()
    assert (ours.float() - exact).abs().max() <= sdpa_error + 2**-8


def test_prefill_attention_never_sees_later_positions(kernels):
    """Each position attends to itself and the positions before it, whatever comes after:
    the outputs of a prefix are those of the prefix alone."""
    generator = torch.Generator().manual_seed(1)
    qkv = torch.randn(70, 15, 64, generator=generator).to(torch.bfloat16)
    full = kernels.prefill_attention(qkv[:, :9], qkv[:, 9:12], qkv[:, 12:], 0.125)
    qkv[40:, 9:] = 100.0  # later keys and values that would dominate
    prefix = kernels.prefill_attention(qkv[:40, :9], qkv[:40, 9:12], qkv[:40, 12:], 0.125)
    assert torch.equal(full[:40], prefix)
    # position 0 sees only itself: its value row, for each query head of the group
    assert torch.equal(full[0, 3:6], qkv[0, 13:14].expand(3, 64))


def test_prefill_attention_takes_only_what_it_supports(kernels):
    q, k = torch.zeros(4, 9, 64, dtype=torch.bfloat16), torch.zeros(4, 3, 64, dtype=torch.bfloat16)
    assert kernels.prefill_attention_supported(q, k)
    assert not kernels.prefill_attention_supported(q.float(), k.float())
    assert not kernels.prefill_attention_supported(q[..., :32], k[..., :32])  # head_dim 32
    assert not kernels.prefill_attention_supported(q[:, :8], k)  # 8 heads over 3
    with pytest.raises(RuntimeError, match="needs bf16 q"):
        kernels.prefill_attention(q.float(), k.float(), k.float(), 1.0)
    with pytest.raises(RuntimeError, match="k and v must be"):
        kernels.prefill_attention(q, k, k[:3], 1.0)
    with pytest.raises(RuntimeError, match="positive scale, got -0.125"):
        kernels.prefill_attention(q, k, k, -0.125)
    assert kernels.prefill_attention(q[:0], k[:0], k[:0], 1.0).shape == (0, 9, 64)


def _paged_prefill_case(dim: int, heads: int, kv_heads: int, gain: float, seed: int):
    """Requests (start position, new tokens) over one cache: from position 0, after a cached
    prefix inside or at the end of a block, a single new token, a long one; blocks scattered;
    slots past each request's end hold NaN. q is a strided view, as the model passes it."""
    generator = torch.Generator().manual_seed(seed)
    requests = [(0, 7), (5, 30), (16, 1), (40, 90), (0, 129), (100, 3)]
    block_size, max_blocks = 16, 9
    num_blocks = len(requests) * max_blocks + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, dim, generator=generator)
    block_table = torch.randperm(num_blocks, generator=generator)[: len(requests) * max_blocks]
    block_table = block_table.view(len(requests), max_blocks)
    for b, (start, n) in enumerate(requests):
        last, used = divmod(start + n, block_size)
        if used:
            cache[:, block_table[b, last], used:] = float("nan")
    cache = cache.to(torch.bfloat16)
    rows = sum(n for _, n in requests)
    qkv = torch.randn(rows, heads + 2 * kv_heads, dim, generator=generator).to(torch.bfloat16)
    qkv[:, :heads] *= gain
    kv_lens = torch.tensor([start + n for start, n in requests])
    q_lens = torch.tensor([n for _, n in requests])
    return requests, cache, block_table, qkv[:, :heads], kv_lens, q_lens


def _paged_prefill_reference(q, cache, block_table, requests):
    """Per request: its K/V gathered from the blocks, SDPA with the causal mask by absolute
    position, in q's dtype."""
    outputs, row = [], 0
    for b, (start, n) in enumerate(requests):
        slots = block_table[b].repeat_interleave(cache.shape[2]) * cache.shape[2]
        slots = (slots + torch.arange(cache.shape[2]).repeat(block_table.shape[1]))[: start + n]
        flat = cache.flatten(1, 2)  # (2, slots, Hkv, D)
        k, v = (flat[i, slots].transpose(0, 1).unsqueeze(0).to(q.dtype) for i in (0, 1))
        allowed = torch.arange(start + n).view(1, -1) <= torch.arange(start, start + n).view(-1, 1)
        out = F.scaled_dot_product_attention(
            q[row : row + n].transpose(0, 1).unsqueeze(0),
            k,
            v,
            attn_mask=allowed,
            scale=q.shape[-1] ** -0.5,
            enable_gqa=True,
        )
        outputs.append(out[0].transpose(0, 1))
        row += n
    return torch.cat(outputs)


@pytest.mark.parametrize(
    ("dim", "heads", "kv_heads", "gain"),
    [(64, 9, 3, 1.0), (64, 9, 3, 8.0), (128, 8, 2, 8.0), (64, 4, 4, 1.0)],
)
def test_paged_prefill_attention_is_as_close_to_fp32_as_sdpa_in_bf16(
    kernels, dim, heads, kv_heads, gain
):
    """Prefill chunks of several requests, each after its cached prefix (or from 0), over K/V
    read from the paged cache: within SDPA's own bf16 error of the fp32 result plus one bf16
    rounding, like the contiguous kernel."""
    requests, cache, block_table, q, kv_lens, q_lens = _paged_prefill_case(
        dim, heads, kv_heads, gain, seed=dim + heads
    )
    ours = kernels.paged_prefill_attention(q, cache, block_table, kv_lens, q_lens, dim**-0.5)
    assert ours.shape == q.shape and ours.dtype == torch.bfloat16 and not ours.isnan().any()
    clean = cache.nan_to_num(0.0)
    exact = _paged_prefill_reference(q.float(), clean.float(), block_table, requests)
    sdpa_error = _paged_prefill_reference(q, clean, block_table, requests).float() - exact
    assert (ours.float() - exact).abs().max() <= sdpa_error.abs().max() + 2**-8
    # a request from position 0 gets what the contiguous kernel gives it, bit for bit
    start = sum(n for _, n in requests[:4])
    flat = cache.flatten(1, 2)
    slots = (block_table[4].repeat_interleave(16) * 16 + torch.arange(16).repeat(9))[:129]
    alone = kernels.prefill_attention(
        q[start : start + 129], flat[0, slots], flat[1, slots], dim**-0.5
    )
    assert torch.equal(ours[start : start + 129], alone)


def test_paged_prefill_attention_rejects_what_it_cannot_take(kernels):
    requests, cache, block_table, q, kv_lens, q_lens = _paged_prefill_case(64, 9, 3, 1.0, 0)
    with pytest.raises(RuntimeError, match="positive scale, got 0"):
        kernels.paged_prefill_attention(q, cache, block_table, kv_lens, q_lens, 0.0)
    with pytest.raises(RuntimeError, match="q has 250 rows, q_lens sum to 260"):
        kernels.paged_prefill_attention(q[:250], cache, block_table, kv_lens, q_lens, 1.0)
    too_long = kv_lens.clone()
    too_long[2] = 9 * 16 + 1
    with pytest.raises(RuntimeError, match="request 2: q_len 1 and kv_len 145"):
        kernels.paged_prefill_attention(q, cache, block_table, too_long, q_lens, 1.0)
    bad_table = block_table.clone()
    bad_table[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="block 10000 out of range"):
        kernels.paged_prefill_attention(q, cache, bad_table, kv_lens, q_lens, 1.0)
    with pytest.raises(RuntimeError, match="needs bf16 q"):
        kernels.paged_prefill_attention(q.float(), cache, block_table, kv_lens, q_lens, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), [(70, 96), (33, 32), (96, 576)])
def test_w8a8_linear_computes_the_reference_bits(kernels, dtype, out_features, in_features):
    """Any N (tiles of 32 outputs, the last one padded), K in blocks of 32, 1 to 13 rows
    (groups of 6 and their remainders): bitwise `w8a8_reference`, with and without bias; an
    all-zero activation block (scale 0) and a block of one value (every value ±127)."""
    from seekserve.models.layers.quant import w8a8_reference

    generator = torch.Generator().manual_seed(out_features)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator)
    weight = weight.to(torch.int8)
    scales = torch.rand(out_features, generator=generator) / 50
    bias = torch.randn(out_features, generator=generator).to(dtype)
    packed, offsets = kernels.pack_w8a8(weight)
    assert packed.shape == (-(-out_features // 32), in_features // 4, 32, 4)
    assert offsets.shape == (-(-out_features // 32), in_features // 32, 32)
    # offsets: -128 · the sum of each output's weights over each block
    assert int(offsets[0, 0, 0]) == -128 * int(weight[0, :32].sum())
    for rows in range(1, 14):
        x = torch.randn(rows, in_features, generator=generator).to(dtype)
        x[0, :32] = 0.0
        if rows > 1:
            x[1, :32] = -3.0
        for b in (None, bias):
            ours = kernels.w8a8_linear(x, packed, offsets, scales, b)
            assert ours.dtype == dtype and ours.shape == (rows, out_features)
            assert torch.equal(ours, w8a8_reference(x, weight, scales, b)), (rows, b is None)


def test_w8a8_linear_is_close_to_the_float_product(kernels):
    """Quantizing the activations costs little: within 1.5 % of the largest output."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randint(-127, 128, (64, 576), generator=generator).to(torch.int8)
    scales = torch.full((64,), 0.01)
    packed, offsets = kernels.pack_w8a8(weight)
    x = torch.randn(8, 576, generator=generator)
    expected = (x @ weight.float().T) * scales
    ours = kernels.w8a8_linear(x, packed, offsets, scales, None)
    assert (ours - expected).abs().max() < 0.015 * expected.abs().max()


def test_w8a8_linear_rejects_mismatched_tensors(kernels):
    packed, offsets = kernels.pack_w8a8(torch.zeros(40, 64, dtype=torch.int8))
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="int8 tensor"):
        kernels.pack_w8a8(torch.zeros(4, 64))
    with pytest.raises(RuntimeError, match=r"K \(48\) to be a multiple of 32"):
        kernels.pack_w8a8(torch.zeros(4, 48, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="K = x.size"):
        kernels.w8a8_linear(torch.randn(2, 32), packed, offsets, torch.ones(40), None)
    with pytest.raises(RuntimeError, match="N = scales.numel"):
        kernels.w8a8_linear(x, packed, offsets, torch.ones(70), None)
    with pytest.raises(RuntimeError, match="bias must be"):
        kernels.w8a8_linear(x, packed, offsets, torch.ones(40), torch.ones(40).bfloat16())
    with pytest.raises(RuntimeError, match="bf16 or fp32"):
        kernels.w8a8_linear(x.half(), packed, offsets, torch.ones(40), None)
    assert kernels.w8a8_linear(x[:0], packed, offsets, torch.ones(40), None).shape == (0, 40)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("intermediate", "rows"), [(16, 1), (48, 7), (96, 13)])
def test_w8a8_silu_mul_is_silu_and_mul_of_the_layer_bit_for_bit(kernels, dtype, intermediate, rows):
    """The gate_up layer's weights interleaved by 16 (gate 16t.., then up 16t.., each t), the
    activation in the epilogue: the bits silu_and_mul gives on the plain layer's output.
    Gains spread the gates over silu's whole range; 1-13 rows (row groups and remainders)."""
    generator = torch.Generator().manual_seed(intermediate + rows)
    weight = torch.randint(-127, 128, (2 * intermediate, 96), generator=generator).to(torch.int8)
    scales = torch.rand(2 * intermediate, generator=generator) * 0.02
    x = (torch.randn(rows, 96, generator=generator) * 3).to(dtype)
    plain = kernels.silu_and_mul(kernels.w8a8_linear(x, *kernels.pack_w8a8(weight), scales, None))
    order = torch.arange(2 * intermediate).view(2, -1, 16).transpose(0, 1).flatten()
    fused = kernels.w8a8_silu_mul(x, *kernels.pack_w8a8(weight[order].contiguous()), scales[order])
    assert fused.dtype == dtype and fused.shape == (rows, intermediate)
    assert torch.equal(fused, plain)
    packed, offsets = kernels.pack_w8a8(weight[:24])
    with pytest.raises(RuntimeError, match="2 × a multiple of 16 outputs, got 24"):
        kernels.w8a8_silu_mul(x, packed, offsets, scales[:24])


@pytest.mark.parametrize(("out_features", "in_features"), [(64, 48), (70, 37), (5, 3)])
def test_bf16_linear_equals_the_fp32_product(kernels, out_features, in_features):
    """Any N (tiles of 32 outputs, the last one padded), any K (odd: a zero-padded last
    pair), 1 to 9 rows (groups of 4 rows and their remainders); fp32 sums, one rounding."""
    generator = torch.Generator().manual_seed(out_features)
    weight = torch.randn(out_features, in_features, generator=generator).to(torch.bfloat16)
    bias = torch.randn(out_features, generator=generator).to(torch.bfloat16)
    packed = kernels.pack_bf16(weight)
    assert packed.shape == (-(-out_features // 32), -(-in_features // 2), 32, 2)
    for rows in range(1, 10):
        x = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
        expected = x.float() @ weight.float().T
        ours = kernels.bf16_linear(x, packed, out_features, None)
        assert ours.dtype == torch.bfloat16 and ours.shape == (rows, out_features)
        torch.testing.assert_close(ours.float(), expected, rtol=8e-3, atol=1e-4)
        with_bias = kernels.bf16_linear(x, packed, out_features, bias)
        torch.testing.assert_close(with_bias.float(), expected + bias.float(), rtol=8e-3, atol=1e-4)


def cpu_flags() -> set[str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return set(next((ln.split(":", 1)[1] for ln in lines if ln.startswith("flags")), "").split())


def test_amx_is_used_where_the_cpu_has_it(kernels):
    """The kernels are built with -march=native: AMX's tile products exist exactly where the
    CPU reports amx_bf16 (and Linux grants the tile state)."""
    assert kernels.amx_bf16_available() == ("amx_bf16" in cpu_flags())


@pytest.mark.parametrize(("out_features", "in_features"), [(33, 32), (96, 576), (40, 1536)])
def test_bf16_linear_amx_rows_equal_the_fp32_product(kernels, out_features, in_features):
    """From 3 rows on, with K a multiple of 32, bf16_linear takes AMX's tile products (where
    the CPU has them): 16 or 32 rows a pass, the rows padded to 16, a last partial tile of
    outputs; fp32 sums, one rounding."""
    generator = torch.Generator().manual_seed(in_features)
    weight = torch.randn(out_features, in_features, generator=generator).to(torch.bfloat16)
    bias = torch.randn(out_features, generator=generator).to(torch.bfloat16)
    packed = kernels.pack_bf16(weight)
    for rows in (3, 15, 16, 17, 31, 32, 33, 48, 70):
        x = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
        expected = x.float() @ weight.float().T + bias.float()
        ours = kernels.bf16_linear(x, packed, out_features, bias)
        assert ours.shape == (rows, out_features)
        torch.testing.assert_close(ours.float(), expected, rtol=8e-3, atol=1e-3)
        # each row as computed alone (the vector path at 1 row): equal up to the sum order
        alone = kernels.bf16_linear(x[rows - 1 :], packed, out_features, bias)
        torch.testing.assert_close(ours[rows - 1 :].float(), alone.float(), rtol=8e-3, atol=1e-3)


def test_bf16_linear_rejects_mismatched_tensors(kernels):
    packed = kernels.pack_bf16(torch.zeros(40, 16, dtype=torch.bfloat16))
    x = torch.randn(2, 16).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="bf16 tensor"):
        kernels.pack_bf16(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="x must be"):
        kernels.bf16_linear(x.float(), packed, 40, None)
    with pytest.raises(RuntimeError, match="N = out_features"):
        kernels.bf16_linear(x, packed, 70, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        kernels.bf16_linear(x, packed, 40, torch.ones(40))


@pytest.mark.parametrize("vocab", [1, 5, 16, 17, 33, 49157])
def test_argmax_rows_equals_torch_argmax(kernels, vocab):
    """Random rows and rows full of ties (the first maximal index wins), every length around
    the 16-wide vector loop."""
    generator = torch.Generator().manual_seed(vocab)
    for scores in (
        torch.randn(7, vocab, generator=generator),
        torch.randint(0, 3, (7, vocab), generator=generator).float(),
    ):
        assert torch.equal(kernels.argmax_rows(scores), scores.argmax(dim=-1))
        # bf16 rows (as the LM head makes them; rounding makes ties): the answer over their
        # fp32 copy
        rounded = scores.bfloat16()
        assert torch.equal(kernels.argmax_rows(rounded), rounded.float().argmax(dim=-1))


def test_argmax_rows_handles_nan_and_infinities(kernels):
    scores = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    scores[0, 3] = float("inf")
    scores[1, 50] = scores[1, 70] = float("nan")
    scores[2, 99] = float("nan")  # in the scalar tail
    scores[3] = float("-inf")
    assert kernels.argmax_rows(scores).tolist() == [3, 50, 99, 0] == scores.argmax(-1).tolist()
    assert kernels.argmax_rows(scores.bfloat16()).tolist() == [3, 50, 99, 0]
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        kernels.argmax_rows(scores.half())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_equals_index_copy(kernels, dtype):
    """K and V rows (views into a fused qkv output: strided tokens) land in their slots as
    index_copy_ puts them; a slot outside the cache is an error, not a stray write."""
    generator = torch.Generator().manual_seed(5)
    cache = torch.randn(2, 6, 4, 3, 8, generator=generator).to(dtype)  # 24 slots
    qkv = torch.randn(5, (4 + 3 + 3) * 8, generator=generator).to(dtype)
    k = qkv[:, 32:56].view(5, 3, 8)
    v = qkv[:, 56:].view(5, 3, 8)
    slots = torch.tensor([7, 0, 23, 12, 13])
    expected = cache.clone()
    flat = expected.view(2, -1, 3, 8)
    flat[0].index_copy_(0, slots, k)
    flat[1].index_copy_(0, slots, v)
    kernels.write_kv_(cache, k, v, slots)
    assert torch.equal(cache, expected)
    with pytest.raises(RuntimeError, match="slot 24 out of range"):
        kernels.write_kv_(cache, k, v, torch.tensor([7, 0, 24, 12, 13]))
    with pytest.raises(RuntimeError, match="k and v must be"):
        kernels.write_kv_(cache, k.float() if dtype == torch.bfloat16 else k.double(), v, slots)
    # a prefill's worth of rows (copied by several threads): a permutation of 700 slots
    big = torch.randn(2, 50, 16, 3, 8, generator=generator).to(dtype)
    rows = torch.randn(700, 2, 3, 8, generator=generator).to(dtype)
    slots = torch.randperm(800, generator=generator)[:700]
    expected = big.clone()
    expected.view(2, -1, 3, 8)[0].index_copy_(0, slots, rows[:, 0])
    expected.view(2, -1, 3, 8)[1].index_copy_(0, slots, rows[:, 1])
    kernels.write_kv_(big, rows[:, 0], rows[:, 1], slots)
    assert torch.equal(big, expected)


def test_huge_pages_tensors_hold_their_values_and_outlive_their_neighbours(kernels):
    # small tensors share 64 MiB arenas at 64-byte steps; large ones get a 2 MiB-aligned mapping
    x = torch.randn(1000, 577, generator=torch.Generator().manual_seed(0))
    copies = [kernels.huge_pages_copy(x[i : i + 3]) for i in range(0, 30, 3)]
    assert all(c.data_ptr() % 64 == 0 and c.is_contiguous() for c in copies)
    step = (3 * 577 * 4 + 63) // 64 * 64  # next to each other, unless an arena filled up
    gaps = [b.data_ptr() - a.data_ptr() for a, b in zip(copies, copies[1:], strict=False)]
    assert gaps.count(step) >= len(gaps) - 1
    del copies[:5]  # the arena stays mapped for the tensors still alive in it
    for i, c in zip(range(15, 30, 3), copies, strict=True):
        assert torch.equal(c, x[i : i + 3])
    transposed = kernels.huge_pages_copy(x.t())  # a strided source: a contiguous copy
    assert transposed.is_contiguous() and torch.equal(transposed, x.t())
    big = kernels.huge_pages_empty([40 << 20], torch.uint8)
    assert big.data_ptr() % (2 << 20) == 0 and big.dtype == torch.uint8
    big.fill_(7)
    assert int(big[-1]) == 7
    assert kernels.huge_pages_empty([0, 5], torch.bfloat16).shape == (0, 5)
