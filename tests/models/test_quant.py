"""Int8 weight-only linears: exact against their own dequantized weights, close to the
unquantized model."""

from __future__ import annotations

import torch
from torch import nn

from seekserve.engine.engine import Engine
from seekserve.models.layers.quant import (
    AMX_MAX_ROWS,
    TILED_MAX_ROWS,
    Int8Linear,
    quantize_linears_int8,
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


def test_int8_engine_logits_stay_close_to_the_unquantized_ones(tiny_llama_dir):
    prompt = list(range(20, 45))
    logits = []
    for quantization in (None, "int8"):
        engine = Engine.from_config(
            engine_config(tiny_llama_dir, quantization=quantization), frozenset()
        )
        engine.add_request("q", prompt, SamplingParams(max_tokens=1, temperature=0.0))
        while True:
            out = engine.scheduler.schedule()
            ids, step_logits = engine.runner.compute_logits(out)
            engine.scheduler.update(out, {"q": 0} if ids else {})
            if ids:
                logits.append(step_logits[0])
                break
    full, int8 = logits
    cosine = torch.nn.functional.cosine_similarity(full, int8, dim=0)
    assert cosine > 0.995
    assert int(full.argmax()) == int(int8.argmax())


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
