"""Int8 weight-only linears: exact against their own dequantized weights, close to the
unquantized model. W8A8 linears: the activation quantization exactly as specified, close to
the unquantized model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seekserve.engine.engine import Engine
from seekserve.models.layers.quant import (
    AMX_MAX_ROWS,
    TILED_MAX_ROWS,
    Int8Linear,
    W8A8Linear,
    quantize_activations,
    quantize_linears_int8,
    quantize_linears_w8a8,
)
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config


def test_int8_linear_equals_its_dequantized_weights():
    torch.manual_seed(0)
    linear = nn.Linear(48, 20, bias=True)
    quantized = Int8Linear(linear)
    dequantized = quantized.weight_int8.float() * quantized.scales[:, None]
    x = torch.randn(2, 5, 48)
    expected = x @ dequantized.T + linear.bias.detach()
    torch.testing.assert_close(quantized(x), expected, rtol=1e-5, atol=1e-5)
    # per-channel int8 keeps the weights within half a step of their scale
    step = quantized.scales[:, None]
    assert ((dequantized - linear.weight.detach()).abs() <= step / 2 + 1e-7).all()


def test_quantize_replaces_every_linear_including_a_tied_head():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    assert quantize_linears_int8(model) == 2
    assert isinstance(model[0], Int8Linear) and isinstance(model[2][0], Int8Linear)


def test_activations_are_quantized_per_block_of_32_half_to_even():
    x = torch.zeros(2, 64)
    x[0, :4] = torch.tensor([127.0, -63.5, 0.5, 1.5])  # scale 1: halves round to even
    x[0, 32:36] = torch.tensor([2.54, -1.27, 0.0127, 0.0])  # scale 0.02
    values, scales = quantize_activations(x)
    assert values.shape == (2, 2, 32) and scales.shape == (2, 2)
    assert values[0, 0, :4].tolist() == [127.0, -64.0, 0.0, 2.0]
    assert scales[0, 0].item() == 1.0
    assert values[0, 1, :4].tolist() == [127.0, -64.0, 1.0, 0.0]
    assert scales[0, 1].item() == torch.tensor(2.54 / 127.0).item()
    assert scales[1].tolist() == [0.0, 0.0] and not values[1].any()  # all-zero blocks


def test_w8a8_linear_stays_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=True)
    quantized = W8A8Linear(linear)  # no kernels: the PyTorch reference
    x = torch.randn(3, 5, 96)
    expected = linear(x).detach()
    ours = quantized(x)
    assert ours.shape == (3, 5, 40)
    assert (ours - expected).abs().max() < 0.02 * expected.abs().max()
    with pytest.raises(ValueError, match="divisible by 32"):
        W8A8Linear(nn.Linear(48, 8))


def test_quantize_w8a8_keeps_weight_only_int8_where_k_is_not_in_blocks_of_32():
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 2))
    assert quantize_linears_w8a8(model) == 2
    assert isinstance(model[0], W8A8Linear) and isinstance(model[2], Int8Linear)


@pytest.mark.parametrize("quantization", ["int8", "w8a8"])
def test_quantized_engine_logits_stay_close_to_the_unquantized_ones(tiny_llama_dir, quantization):
    prompt = list(range(20, 45))
    logits = []
    for mode in (None, quantization):
        engine = Engine.from_config(engine_config(tiny_llama_dir, quantization=mode), frozenset())
        engine.add_request("q", prompt, SamplingParams(max_tokens=1, temperature=0.0))
        while True:
            out = engine.scheduler.schedule()
            ids, step_logits = engine.runner.compute_logits(out)
            engine.scheduler.update(out, {"q": 0} if ids else {})
            if ids:
                logits.append(step_logits[0])
                break
    full, quantized = logits
    cosine = torch.nn.functional.cosine_similarity(full, quantized, dim=0)
    # w8a8 also rounds every activation to 8 bits (random tiny weights: 0.994 here)
    assert cosine > (0.995 if quantization == "int8" else 0.99)
    assert int(full.argmax()) == int(quantized.argmax())


def test_the_tiled_int8_kernel_computes_the_same_quantized_layer():
    from seekserve.runner import cpu_kernels

    assert cpu_kernels.enable()
    torch.manual_seed(1)
    linear = nn.Linear(64, 20, bias=True).to(torch.bfloat16)
    kernels = cpu_kernels.get(torch.device("cpu"))
    tiled = Int8Linear(linear, kernels)
    plain = Int8Linear(linear)
    assert tiled.max_rows == (AMX_MAX_ROWS if kernels.amx_bf16_available() else TILED_MAX_ROWS)
    assert plain.max_rows == 4
    # tiled kernel up to max_rows (AMX from 3 rows), int8pack_mm up to 4
    for rows in (1, 3, 5, 8, 9, 64, 65):
        x = torch.randn(rows, 64).to(torch.bfloat16)
        torch.testing.assert_close(tiled(x), plain(x), rtol=1e-2, atol=2e-2)


def test_a_silu_mlp_gate_up_computes_its_activation_in_the_w8a8_epilogue():
    """`quantize_linears_w8a8` interleaves a silu MLP's gate_up weights (`silu_mul`): the
    MLP then never makes the [gate ‖ up] output and gives the bits the unfused layers give;
    the layer's own forward still returns [gate ‖ up] in order. A gelu MLP keeps the plain
    layer; without the kernels nothing is fused (the PyTorch reference path)."""
    from seekserve.models.layers.mlp import GatedMLP, gelu_tanh
    from seekserve.runner import cpu_kernels

    assert cpu_kernels.enable()
    kernels = cpu_kernels.get(torch.device("cpu"))
    if not kernels.fast_w8a8_linear:
        pytest.skip("this CPU has no AVX512-VNNI: w8a8 runs the reference path")
    torch.manual_seed(3)
    mlp = GatedMLP(64, 96).to(torch.bfloat16)
    gate_up, down = W8A8Linear(mlp.gate_up_proj, kernels), W8A8Linear(mlp.down_proj, kernels)
    quantize_linears_w8a8(mlp, kernels)
    assert mlp.gate_up_proj.fuses_silu_mul and not gate_up.fuses_silu_mul
    gelu_mlp = GatedMLP(64, 96, activation=gelu_tanh).to(torch.bfloat16)
    quantize_linears_w8a8(gelu_mlp, kernels)
    assert not gelu_mlp.gate_up_proj.fuses_silu_mul
    x = (torch.randn(11, 64) * 4).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(mlp.gate_up_proj(x), gate_up(x))
        assert torch.equal(mlp(x), down(kernels.silu_and_mul(gate_up(x))))
    assert not W8A8Linear(
        nn.Linear(64, 192, bias=False), silu_mul=True
    ).fuses_silu_mul  # no kernels
