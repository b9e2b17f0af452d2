"""GGUF tensor types: each one SeekServe promises loads, dequantizes to the right values and
shape; a whole tiny llama in F32/F16/Q8_0 runs through the engine like its dequantized twin;
unsupported architectures and tensor types stop the start with their names.

Types `gguf.quants.quantize` implements are quantized from random floats; K-quants (no Python
quantizer) are random blocks of the right size with valid fp16 scales. Q6_K is also checked
against an independent numpy transcription of ggml's `dequantize_row_q6_K`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf.quants import GGML_QUANT_SIZES

from seekserve.engine.engine import Engine
from seekserve.loader.gguf import TESTED_TENSOR_TYPES, load_gguf_weights
from seekserve.loader.model_loader import check_model_files
from seekserve.sampling_params import SamplingParams
from tests.conftest import build_tiny_llama, engine_config, hf_greedy
from tests.loader.test_gguf import gguf_name, llama_cpp_permute

ROWS, COLS = 4, 512  # COLS: two 256-value K-quant blocks per row
NAME = "blk.0.ffn_down.weight"  # -> model.layers.0.mlp.down_proj.weight (no q/k permutation)
HF_NAME = "model.layers.0.mlp.down_proj.weight"

# type -> largest |dequantized - original| allowed, relative to the row's max |value|
QUANTIZABLE = {
    "F32": 0.0,
    "F16": 1e-3,
    "BF16": 1e-2,
    "Q8_0": 1 / 127,
    "Q5_0": 1 / 15,
    "Q4_0": 1 / 7,
    "Q4_1": 1 / 7,
}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
# byte offsets of the fp16 super-block scales in one block: Q4_K/Q5_K d, dmin; Q6_K d (last)
K_QUANT_FP16_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def write_one_tensor_gguf(
    path: Path, data: np.ndarray, qtype: QType | None = None, arch: str = "llama"
) -> Path:
    """A GGUF with a minimal llama header, a tiny F32 token embedding and `data` at NAME
    (`qtype` given: `data` is the raw uint8 blocks of that type)."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(COLS)
    writer.add_feed_forward_length(ROWS)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.zeros((8, COLS), dtype=np.float32))
    if qtype is None:
        writer.add_tensor(NAME, data)
    else:
        writer.add_tensor(NAME, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_k_quant_blocks(qtype: QType, seed: int = 0) -> np.ndarray:
    """(ROWS, bytes per row) uint8: random bytes, fp16 scales set to values in [0.01, 1)."""
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    num_blocks = ROWS * COLS // block_values
    blocks = rng.integers(0, 256, size=(num_blocks, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_FP16_OFFSETS[qtype.name]:
        scales = rng.uniform(0.01, 1.0, size=num_blocks).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(num_blocks, 2)
    return blocks.reshape(ROWS, -1)


def reference_q6_k(raw: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q6_K, transcribed loop by loop (slow, independent of gguf-py)."""
    blocks = raw.reshape(-1, 210)
    out = np.zeros((len(blocks), 256), dtype=np.float32)
    for b, block in enumerate(blocks):
        ql, qh = block[:128].astype(np.int32), block[128:192].astype(np.int32)
        sc = block[192:208].view(np.int8).astype(np.float32)
        d = float(block[208:210].view(np.float16)[0])
        for half in range(2):
            y, q_lo, q_hi, s = half * 128, ql[half * 64 :], qh[half * 32 :], sc[half * 8 :]
            for i in range(32):
                j = i // 16
                q1 = ((q_lo[i] & 0xF) | (((q_hi[i] >> 0) & 3) << 4)) - 32
                q2 = ((q_lo[i + 32] & 0xF) | (((q_hi[i] >> 2) & 3) << 4)) - 32
                q3 = ((q_lo[i] >> 4) | (((q_hi[i] >> 4) & 3) << 4)) - 32
                q4 = ((q_lo[i + 32] >> 4) | (((q_hi[i] >> 6) & 3) << 4)) - 32
                out[b, y + i] = d * s[j] * q1
                out[b, y + i + 32] = d * s[j + 2] * q2
                out[b, y + i + 64] = d * s[j + 4] * q3
                out[b, y + i + 96] = d * s[j + 6] * q4
    return out.reshape(ROWS, COLS)


def test_the_promised_types_are_the_tested_ones() -> None:
    assert set(TESTED_TENSOR_TYPES) == set(QUANTIZABLE) | set(K_QUANTS)


@pytest.mark.parametrize("type_name", list(QUANTIZABLE))
def test_quantized_floats_load(tmp_path: Path, type_name: str) -> None:
    qtype = QType[type_name]
    original = np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(np.float32)
    if type_name == "F32":
        path = write_one_tensor_gguf(tmp_path / "t.gguf", original)
        expected = original
    elif type_name == "F16":
        path = write_one_tensor_gguf(tmp_path / "t.gguf", original.astype(np.float16))
        expected = original.astype(np.float16).astype(np.float32)
    else:
        raw = gguf.quants.quantize(original, qtype)
        path = write_one_tensor_gguf(tmp_path / "t.gguf", raw, qtype)
        expected = gguf.quants.dequantize(raw, qtype)
    reader_type = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}[NAME]
    assert reader_type == qtype
    loaded = load_gguf_weights(path, torch.float32)[HF_NAME]
    assert loaded.shape == (ROWS, COLS)
    assert torch.equal(loaded, torch.from_numpy(expected))
    row_max = np.abs(original).max(axis=1, keepdims=True)
    assert np.all(np.abs(expected - original) <= QUANTIZABLE[type_name] * row_max)


@pytest.mark.parametrize("type_name", K_QUANTS)
def test_k_quants_load(tmp_path: Path, type_name: str) -> None:
    qtype = QType[type_name]
    raw = random_k_quant_blocks(qtype)
    path = write_one_tensor_gguf(tmp_path / "t.gguf", raw, qtype)
    tensor = {t.name: t for t in gguf.GGUFReader(path).tensors}[NAME]
    assert (tensor.tensor_type, tuple(tensor.shape)) == (qtype, (COLS, ROWS))  # ggml order
    loaded = load_gguf_weights(path, torch.float32)[HF_NAME]
    assert loaded.shape == (ROWS, COLS)
    expected = gguf.quants.dequantize(raw, qtype)
    assert torch.equal(loaded, torch.from_numpy(expected))
    assert torch.isfinite(loaded).all() and loaded.abs().max() > 0
    if type_name == "Q6_K":
        np.testing.assert_allclose(loaded.numpy(), reference_q6_k(raw), rtol=1e-6, atol=0)


def test_unsupported_tensor_type_fails_the_start_check(tmp_path: Path) -> None:
    """Q8_1 has no numpy dequantizer in gguf-py: refused before any weight is read."""
    _, block_bytes = GGML_QUANT_SIZES[QType.Q8_1]
    raw = np.zeros((ROWS, COLS // 32 * block_bytes), dtype=np.uint8)
    path = write_one_tensor_gguf(tmp_path / "q8_1.gguf", raw, QType.Q8_1)
    with pytest.raises(ValueError) as info:
        check_model_files(path)
    assert str(info.value) == (
        "GGUF tensor 'blk.0.ffn_down.weight' has type Q8_1, which the gguf package cannot "
        "dequantize; use a file quantized as F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, "
        "Q5_K, Q6_K (or another type gguf.quants can dequantize)"
    )


def test_unsupported_architecture_fails_the_start_check(tmp_path: Path) -> None:
    path = write_one_tensor_gguf(
        tmp_path / "gpt2.gguf", np.zeros((ROWS, COLS), np.float32), arch="gpt2"
    )
    with pytest.raises(ValueError, match=r"^unsupported GGUF architecture 'gpt2'; supported: "):
        check_model_files(path)


# ---- a whole model ---------------------------------------------------------------------

HEADS, KV_HEADS = 4, 2
# HF tensor-name fragment -> GGUF type the tiny model stores it as (others F32)
MIXED_TYPES = {"q_proj": QType.F16, "k_proj": QType.F16, "o_proj": QType.F16, "mlp.": QType.Q8_0}


def convert_to_gguf(hf_dir: Path, path: Path) -> dict[str, np.ndarray]:
    """Write the HF checkpoint as llama.cpp would (q/k permuted), tensors typed by
    MIXED_TYPES; return the weights the file holds, dequantized, in HF order."""
    from safetensors.numpy import load_file

    weights = load_file(str(hf_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in (
        ("block_count", 2),
        ("context_length", 512),
        ("embedding_length", 64),
        ("feed_forward_length", 128),
        ("head_count", HEADS),
        ("head_count_kv", KV_HEADS),
        ("layer_norm_rms_eps", 1e-5),
        ("rope_freq_base", 10000.0),
    ):
        getattr(writer, f"add_{key}")(value)
    dequantized: dict[str, np.ndarray] = {}
    for hf_name, array in weights.items():
        qtype = next((t for k, t in MIXED_TYPES.items() if k in hf_name), QType.F32)
        name = gguf_name(hf_name)
        stored = array
        if ".attn_q." in name:
            stored = llama_cpp_permute(array, HEADS)
        elif ".attn_k." in name:
            stored = llama_cpp_permute(array, KV_HEADS)
        if qtype == QType.F16:
            writer.add_tensor(name, stored.astype(np.float16))
            dequantized[hf_name] = array.astype(np.float16).astype(np.float32)
        elif qtype == QType.Q8_0:
            writer.add_tensor(name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
            dequantized[hf_name] = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
        else:
            writer.add_tensor(name, stored)
            dequantized[hf_name] = array
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dequantized


def test_mixed_type_llama_through_the_engine_matches_its_dequantized_weights(
    tmp_path: Path,
) -> None:
    from transformers import LlamaForCausalLM

    hf_dir = build_tiny_llama(tmp_path / "hf")
    path = tmp_path / "tiny-mixed.gguf"
    dequantized = convert_to_gguf(hf_dir, path)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert (types["blk.0.attn_q.weight"], types["blk.1.ffn_up.weight"]) == ("F16", "Q8_0")
    assert types["blk.0.attn_norm.weight"] == "F32"

    reference = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    state = {name: torch.from_numpy(array) for name, array in dequantized.items()}
    reference.load_state_dict(state, strict=False)  # lm_head stays tied to the embedding
    assert not torch.equal(state["model.layers.0.mlp.up_proj.weight"], reference_original(hf_dir))

    engine = Engine.from_config(engine_config(path), eos_token_ids=frozenset())
    prompts = [[1, 2, 3, 4, 5, 6, 7], list(range(20, 45))]
    for index, prompt in enumerate(prompts):
        engine.add_request(str(index), prompt, SamplingParams(max_tokens=10, temperature=0.0))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    assert [tokens["0"], tokens["1"]] == [hf_greedy(reference, p, 10) for p in prompts]


def reference_original(hf_dir: Path) -> torch.Tensor:
    """The unquantized up_proj of layer 0 (the Q8_0 copy must differ from it)."""
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
