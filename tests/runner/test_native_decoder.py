"""The native step (`runner/csrc/decoder.cpp`) against the Python layers it replaces: the
same ops in the same order, so the hidden states of every decode step are bitwise equal, in
fp32 (plain linears), bf16 (oneDNN-packed linears), int8 (int8 kernel up to 4 rows,
dequantized weights above) and w8a8, for llama and qwen2 (QKV bias), at batch sizes 10 down
to 1; and in bf16 of every step with prefill chunks too (prompts from position 0, chunks
after cached positions, decodes mixed in; the full pass and the one pruned to the sampling
rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seekserve.models.layers.linear import (
    AMX_MAX_ROWS,
    TILED_MAX_ROWS,
    PackedLinear,
    native_linear,
)
from seekserve.models.layers.quant import Int8Linear, W8A8Linear
from seekserve.runner import cpu_kernels
from seekserve.runner.inputs import prepare_inputs
from seekserve.sampling_params import SamplingParams
from tests.conftest import build_tiny_llama
from tests.models.engine_drivers import make_engine
from tests.models.test_llama_qwen2 import build_tiny_qwen2


class CountingDecoder:
    def __init__(self, decoder) -> None:
        self.decoder, self.calls = decoder, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.decoder.forward(*args, **kwargs)


@pytest.fixture(scope="module")
def kernels():
    assert cpu_kernels.enable(), "the CPU kernels did not build (see the log for the reason)"
    return cpu_kernels.get(torch.device("cpu"))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"native-{request.param}")
    if request.param == "llama":
        return build_tiny_llama(directory, num_hidden_layers=3)
    return build_tiny_qwen2(directory)


@pytest.mark.parametrize(
    ("dtype", "quantization"),
    [("float32", None), ("bfloat16", None), ("bfloat16", "int8"), ("bfloat16", "w8a8")],
)
def test_decode_steps_equal_the_python_layers(kernels, model_dir, dtype, quantization):
    engine = make_engine(
        model_dir,
        dtype=dtype,
        quantization=quantization,
        num_blocks=128,
        max_num_seqs=10,
        max_num_batched_tokens=256,
    )
    model = engine.runner.model
    assert model.native_decoder is not None
    native = CountingDecoder(model.native_decoder)
    model.native_decoder = native
    generator = torch.Generator().manual_seed(3)
    for index in range(10):  # requests finish one by one: decode batches of 10 down to 1
        prompt = torch.randint(0, 256, (1 + 3 * index,), generator=generator).tolist()
        params = SamplingParams(max_tokens=3 + 2 * index, temperature=0.0, ignore_eos=True)
        engine.add_request(str(index), prompt, params)
    batch_sizes = []
    while engine.has_unfinished_requests():
        output = engine.scheduler.schedule()
        inputs = prepare_inputs(output, engine.runner.block_size).to(
            engine.runner.device, engine.runner.kv_cache.dtype
        )
        with torch.inference_mode():
            ours = model(inputs)  # the native decoder on decode-only steps
            model.native_decoder = None
            try:
                theirs = model(inputs)  # the Python layers (writing the same K/V again)
            finally:
                model.native_decoder = native
            logits = model.compute_logits(ours[inputs.logits_indices])
        if inputs.is_decode_only:
            batch_sizes.append(len(output.scheduled))
            assert torch.equal(ours, theirs), f"decode batch of {len(output.scheduled)}"
        sampled = dict(zip(inputs.sample_request_ids, logits.argmax(-1).tolist(), strict=True))
        engine.scheduler.update(output, sampled)
    assert sorted(set(batch_sizes)) == list(range(1, 11))
    # every decode-only step, nothing else: at head_dim 16 the prefill kernels do not attend
    # (they take 64 or 128), so the prefill steps keep the Python layers
    assert not model.native_prefill
    assert native.calls == len(batch_sizes)


@pytest.fixture(scope="module")
def head_dim_64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's attention shape in small: head_dim 64, 3 query heads per KV head."""
    directory = tmp_path_factory.mktemp("native-prefill")
    return build_tiny_llama(
        directory,
        num_hidden_layers=3,
        hidden_size=192,
        intermediate_size=256,
        num_attention_heads=3,
        num_key_value_heads=1,
    )


@pytest.mark.parametrize("quantization", [None, "int8", "w8a8"])
def test_prefill_steps_equal_the_python_layers(kernels, head_dim_64_dir, quantization):
    """bf16 steps with prefill chunks: requests arrive while others decode, a small token
    budget splits prompts into chunks after their cached positions, and a shared prefix comes
    from the prefix cache. The native step equals the Python layers bit for bit, both the
    full pass (`model(inputs)`) and the one pruned to the sampling rows (`sample_hidden`)."""
    engine = make_engine(
        head_dim_64_dir,
        dtype="bfloat16",
        quantization=quantization,
        num_blocks=128,
        max_num_seqs=6,
        max_num_batched_tokens=48,
    )
    model = engine.runner.model
    assert model.native_decoder is not None and model.native_prefill
    native = CountingDecoder(model.native_decoder)
    model.native_decoder = native
    generator = torch.Generator().manual_seed(11)
    shared = torch.randint(0, 256, (40,), generator=generator).tolist()
    prompts = [
        torch.randint(0, 256, (length,), generator=generator).tolist() for length in (70, 9, 33)
    ]
    prompts += [shared + [5, 6, 7], shared + [8, 9]]  # the second finds 32 positions cached
    kinds, arrivals = set(), dict(enumerate(prompts))
    steps = 0
    while arrivals or engine.has_unfinished_requests():
        if steps % 3 == 0 and arrivals:  # one arrival every third step
            index = min(arrivals)
            params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            engine.add_request(str(index), arrivals.pop(index), params)
        output = engine.scheduler.schedule()
        inputs = prepare_inputs(output, engine.runner.block_size).to(
            engine.runner.device, engine.runner.kv_cache.dtype
        )
        kinds.update(
            "decode" if g.is_decode else "causal" if g.causal else "paged" for g in inputs.groups
        )
        with torch.inference_mode():
            calls = native.calls
            ours, ours_rows = model(inputs), model.sample_hidden(inputs)
            assert native.calls == calls + 2
            model.native_decoder = None
            try:
                theirs, theirs_rows = model(inputs), model.sample_hidden(inputs)
            finally:
                model.native_decoder = native
            logits = model.compute_logits(ours_rows)
        assert torch.equal(ours, theirs), f"step {steps}: {[g.num_tokens for g in inputs.groups]}"
        assert torch.equal(ours_rows, theirs_rows), f"step {steps}, sampling rows"
        sampled = dict(zip(inputs.sample_request_ids, logits.argmax(-1).tolist(), strict=True))
        engine.scheduler.update(output, sampled)
        steps += 1
    assert kinds == {"decode", "causal", "paged"}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prefill_steps_prune_the_last_layer_to_the_sampling_rows(kernels, model_dir, dtype):
    """On steps with prefill chunks (several requests, one mid-prompt under a small token
    budget, decodes mixed in) `sample_hidden` runs the last layer's attention, projection
    and MLP for the sampling rows only, and gives what the full forward gives those rows:
    to fp32 rounding in fp32, within bf16 error in bf16 (the rows attend by the decode
    kernel there, by the prefill kernels in the full pass)."""
    engine = make_engine(
        model_dir, dtype=dtype, num_blocks=128, max_num_seqs=8, max_num_batched_tokens=40
    )
    model = engine.runner.model
    mlp_rows: list[int] = []
    last_mlp = model.model.layers[-1].mlp
    hook = last_mlp.register_forward_hook(lambda _m, args, _out: mlp_rows.append(args[0].shape[0]))
    generator = torch.Generator().manual_seed(5)
    for index in range(5):
        prompt = torch.randint(0, 256, (7 + 11 * index,), generator=generator).tolist()
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        engine.add_request(str(index), prompt, params)
    pruned_steps = 0
    try:
        while engine.has_unfinished_requests():
            output = engine.scheduler.schedule()
            inputs = prepare_inputs(output, engine.runner.block_size).to(
                engine.runner.device, engine.runner.kv_cache.dtype
            )
            with torch.inference_mode():
                mlp_rows.clear()
                ours = model.sample_hidden(inputs)
                pruned = list(mlp_rows)
                theirs = model(inputs)[inputs.logits_indices]  # writes the same K/V again
            if inputs.sample_group is not None and len(inputs.token_ids) > len(ours):
                pruned_steps += 1
                assert pruned == [len(inputs.logits_indices)]
            tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"atol": 0.1}
            torch.testing.assert_close(
                ours, theirs, rtol=tolerance.get("rtol", 0), atol=tolerance["atol"]
            )
            with torch.inference_mode():
                logits = model.compute_logits(ours)
            sampled = dict(zip(inputs.sample_request_ids, logits.argmax(-1).tolist(), strict=True))
            engine.scheduler.update(output, sampled)
    finally:
        hook.remove()
    assert pruned_steps >= 3


@pytest.mark.parametrize(("dtype", "quantization"), [("bfloat16", None), ("bfloat16", "w8a8")])
def test_plain_greedy_steps_take_the_argmax_of_the_head_output(
    kernels, model_dir, dtype, quantization
):
    """When every sampling request is plain greedy, `execute` takes the argmax over the LM
    head's bf16 output without its fp32 copy, and picks the tokens the fp32 logits pick;
    one request with a penalty sends the step back through the logits and the sampler."""
    engine = make_engine(model_dir, dtype=dtype, quantization=quantization, num_blocks=128)
    runner, model = engine.runner, engine.runner.model
    calls = []
    compute_logits = model.compute_logits
    model.compute_logits = lambda hidden: calls.append(len(hidden)) or compute_logits(hidden)
    generator = torch.Generator().manual_seed(9)
    params = {}
    for index in range(4):
        prompt = torch.randint(0, 256, (5 + 4 * index,), generator=generator).tolist()
        params[str(index)] = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        engine.add_request(str(index), prompt, params[str(index)])
    steps = 0
    while engine.has_unfinished_requests():
        output = engine.scheduler.schedule()
        _, logits = runner.compute_logits(output)  # the reference (writes the same K/V)
        calls.clear()
        step_params = {s.request_id: params[s.request_id] for s in output.scheduled}
        if steps == 2:  # one step with a penalised request: the full sampler
            step_params["0"] = SamplingParams(temperature=0.0, frequency_penalty=0.5)
        sampled, _ = runner.execute(output, step_params, {rid: [] for rid in step_params})
        assert calls == ([len(sampled)] if steps == 2 else [])
        if steps != 2:
            expected = logits.argmax(dim=-1).tolist()
            assert list(sampled.values()) == expected
        engine.scheduler.update(output, sampled)
        steps += 1
    assert steps >= 6


@pytest.mark.parametrize("in_features", [48, 64])  # 64: bf16_linear's AMX path from 3 rows
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 17, 32, 33, 64, 65])
def test_native_linears_equal_their_modules(kernels, rows, in_features):
    generator = torch.Generator().manual_seed(rows)
    plain = nn.Linear(in_features, 80, bias=True)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(80, in_features, generator=generator))
        plain.bias.copy_(torch.randn(80, generator=generator))
    bf16 = nn.Linear(in_features, 80, bias=True).to(torch.bfloat16)
    bf16.load_state_dict(plain.state_dict())
    modules = {
        "dense": plain,
        "packed": PackedLinear(bf16),
        "packed tiled": PackedLinear(bf16, kernels),
        "int8": Int8Linear(bf16),
        "int8 tiled": Int8Linear(bf16, kernels),
    }
    if in_features % 32 == 0:
        modules["w8a8"] = W8A8Linear(bf16, kernels)
    for name, module in modules.items():
        dtype = torch.float32 if name == "dense" else torch.bfloat16
        x = torch.randn(rows, in_features, generator=generator).to(dtype)
        with torch.inference_mode():
            assert torch.equal(native_linear(module, kernels)(x), module(x)), name


def test_an_unknown_linear_module_has_no_native_form(kernels):
    assert native_linear(nn.Identity(), kernels) is None


def test_kernels_built_without_vector_instructions_leave_linears_on_onednn():
    """A kernels build without AVX512-BF16 / AVX-512 runs the tiled kernels as plain loops,
    slower than oneDNN: the layers then keep no tiled copy."""
    from types import SimpleNamespace

    plain = SimpleNamespace(fast_bf16_linear=False, fast_int8_linear=False)
    bf16 = nn.Linear(48, 80).to(torch.bfloat16)
    packed, quantized = PackedLinear(bf16, plain), Int8Linear(bf16, plain)
    assert packed.kernels is None and packed.tiled_weight is None
    assert quantized.kernels is None and quantized.weight_int8.shape == (80, 48)
    assert quantized.max_rows == 4  # torch._weight_int8pack_mm


@pytest.mark.parametrize(("amx", "max_rows"), [(True, AMX_MAX_ROWS), (False, TILED_MAX_ROWS)])
def test_packed_linears_take_the_tiled_kernel_up_to_its_row_limit(amx, max_rows):
    """With AMX, bf16_linear beats oneDNN up to AMX_MAX_ROWS rows; without, up to
    TILED_MAX_ROWS. Calls within the limit go to the kernel, the others to oneDNN."""
    from types import SimpleNamespace

    calls = []

    def bf16_linear(x, tiled, out_features, bias):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], out_features, dtype=x.dtype)

    fake = SimpleNamespace(
        fast_bf16_linear=True,
        amx_bf16_available=lambda: amx,
        pack_bf16=lambda weight: weight.clone(),
        bf16_linear=bf16_linear,
    )
    layer = PackedLinear(nn.Linear(64, 8).to(torch.bfloat16), fake)
    assert layer.max_rows == max_rows
    for rows in (1, max_rows, max_rows + 1):
        layer(torch.randn(rows, 64).to(torch.bfloat16))
    assert calls == [1, max_rows]
