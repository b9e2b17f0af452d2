"""GGUF loader: config from the header, HF names and shapes, dequantization, q/k un-permutation.

Tiny GGUF files are written here with `gguf.GGUFWriter`, the way llama.cpp's converter writes
them (q/k rows permuted for arch llama), then read back with our loader.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from seekserve.loader.gguf import (
    hf_tensor_name,
    load_gguf_weights,
    read_gguf_arch_config,
    unpermute_qk_rows,
)
from seekserve.models.config import ModelArchConfig

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 32, 64, 96, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
Q8_0_TENSOR = "blk.1.ffn_down.weight"  # (HIDDEN, FFN): rows of 96 = 3 blocks of 32


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's convert_hf_to_gguf.py applies to llama q/k."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def hf_weights(arch: str, seed: int = 0, with_lm_head: bool = False) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face names and shapes."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    weights = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN), "model.norm.weight": rand(HIDDEN)}
    if with_lm_head:
        weights["lm_head.weight"] = rand(VOCAB, HIDDEN)
    for i in range(LAYERS):
        prefix = f"model.layers.{i}"
        weights |= {
            f"{prefix}.input_layernorm.weight": rand(HIDDEN),
            f"{prefix}.self_attn.q_proj.weight": rand(HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.k_proj.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.v_proj.weight": rand(KV_HEADS * HEAD_DIM, HIDDEN),
            f"{prefix}.self_attn.o_proj.weight": rand(HIDDEN, HEADS * HEAD_DIM),
            f"{prefix}.post_attention_layernorm.weight": rand(HIDDEN),
            f"{prefix}.mlp.gate_proj.weight": rand(FFN, HIDDEN),
            f"{prefix}.mlp.up_proj.weight": rand(FFN, HIDDEN),
            f"{prefix}.mlp.down_proj.weight": rand(HIDDEN, FFN),
        }
        if arch == "qwen2":
            weights |= {
                f"{prefix}.self_attn.q_proj.bias": rand(HEADS * HEAD_DIM),
                f"{prefix}.self_attn.k_proj.bias": rand(KV_HEADS * HEAD_DIM),
                f"{prefix}.self_attn.v_proj.bias": rand(KV_HEADS * HEAD_DIM),
            }
    return weights


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    """Inverse of the loader's renaming, written out independently for the test."""
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, layer, *module, kind = hf_name.split(".")
    return f"blk.{layer}.{GGUF_NAMES['.'.join(module)]}.{kind}"


def write_gguf(
    path: Path,
    weights: dict[str, np.ndarray],
    arch: str = "llama",
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write `weights` as llama.cpp would: GGUF names, llama q/k permuted, one Q8_0 tensor."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(100000.0)
    for hf_name, array in weights.items():
        name = gguf_name(hf_name)
        if arch == "llama" and ".attn_q." in name:
            array = llama_cpp_permute(array, HEADS)
        elif arch == "llama" and ".attn_k." in name:
            array = llama_cpp_permute(array, KV_HEADS)
        if name == Q8_0_TENSOR:
            quantized = gguf.quants.quantize(array, GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama_weights() -> dict[str, np.ndarray]:
    return hf_weights("llama")


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory: pytest.TempPathFactory, llama_weights) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", llama_weights)


def test_read_config_llama(llama_file: Path) -> None:
    assert read_gguf_arch_config(llama_file) == ModelArchConfig(
        architecture="llama",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attention_bias=False,
    )


def test_names_shapes_and_dtype(llama_file: Path, llama_weights) -> None:
    loaded = load_gguf_weights(llama_file, torch.bfloat16)
    assert sorted(loaded) == sorted(llama_weights)
    assert "lm_head.weight" not in loaded
    for name, array in llama_weights.items():
        assert loaded[name].shape == array.shape, name
        assert loaded[name].dtype == torch.bfloat16, name


def test_float32_tensors_round_trip_exactly(llama_file: Path, llama_weights) -> None:
    """q/k come back in Hugging Face row order; every F32 tensor is bit-exact."""
    loaded = load_gguf_weights(llama_file, torch.float32)
    for name, array in llama_weights.items():
        if gguf_name(name) != Q8_0_TENSOR:
            assert torch.equal(loaded[name], torch.from_numpy(array)), name


def test_q8_0_tensor_is_dequantized(llama_file: Path, llama_weights) -> None:
    original = llama_weights["model.layers.1.mlp.down_proj.weight"]
    quantized = gguf.quants.quantize(original, GGMLQuantizationType.Q8_0)
    expected = gguf.quants.dequantize(quantized, GGMLQuantizationType.Q8_0)
    loaded = load_gguf_weights(llama_file, torch.float32)["model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(loaded, torch.from_numpy(expected))
    # Q8_0: 8 bits per weight plus an fp16 scale per 32 -> within one step (max/127) of it.
    step = np.abs(original).reshape(HIDDEN, -1, 32).max(axis=-1, keepdims=True) / 127
    assert np.all(np.abs(expected - original).reshape(HIDDEN, -1, 32) <= step)


def test_untied_lm_head(tmp_path: Path) -> None:
    weights = hf_weights("llama", with_lm_head=True)
    path = write_gguf(tmp_path / "untied.gguf", weights)
    assert read_gguf_arch_config(path).tie_word_embeddings is False
    loaded = load_gguf_weights(path, torch.float32)
    assert torch.equal(loaded["lm_head.weight"], torch.from_numpy(weights["lm_head.weight"]))


def test_qwen2_biases_and_no_permutation(tmp_path: Path) -> None:
    weights = hf_weights("qwen2", seed=1)
    path = write_gguf(tmp_path / "tiny-qwen2.gguf", weights, arch="qwen2")
    config = read_gguf_arch_config(path)
    assert (config.architecture, config.attention_bias) == ("qwen2", True)
    loaded = load_gguf_weights(path, torch.float32)
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.k_proj.bias"):
        full_name = f"model.layers.0.{name}"
        assert torch.equal(loaded[full_name], torch.from_numpy(weights[full_name])), name


def test_unpermute_rows_order() -> None:
    # llama.cpp stores each head's rows as (0, d/2, 1, d/2+1, ...); head_dim 8, 2 heads:
    stored = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15])
    assert unpermute_qk_rows(stored, num_heads=2).tolist() == list(range(16))


def test_unpermute_inverts_llama_cpp_permute() -> None:
    original = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    permuted = torch.from_numpy(llama_cpp_permute(original, n_head=3))
    assert torch.equal(unpermute_qk_rows(permuted, num_heads=3), torch.from_numpy(original))


@pytest.mark.parametrize(
    ("gguf", "hf"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
        ("blk.12.attn_output.weight", "model.layers.12.self_attn.o_proj.weight"),
        ("blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"),
        ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
        ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
    ],
)
def test_hf_tensor_name(gguf: str, hf: str) -> None:
    assert hf_tensor_name(gguf) == hf


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "mamba.gguf", {}, arch="mamba")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'mamba'"):
        read_gguf_arch_config(path)


def test_unknown_tensor_is_named(tmp_path: Path, llama_weights) -> None:
    extra = {"rope_freqs.weight": np.ones(HEAD_DIM // 2, dtype=np.float32)}
    path = write_gguf(tmp_path / "rope-freqs.gguf", llama_weights, extra_tensors=extra)
    with pytest.raises(ValueError, match="'rope_freqs.weight'"):
        load_gguf_weights(path, torch.float32)


def test_unsupported_tensor_type_is_named(tmp_path: Path, llama_weights) -> None:
    weights = dict(llama_weights)
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.float64)  # F64
    path = write_gguf(tmp_path / "f64.gguf", weights)
    with pytest.raises(ValueError, match="'output_norm.weight' has type F64"):
        load_gguf_weights(path, torch.float32)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf_arch_config(path)


def test_real_smollm2_header() -> None:
    """The numbers MODELS.md gives for SmolLM2-135M-Instruct (pulled into the default home)."""
    from seekserve.loader.sources import pull

    assert read_gguf_arch_config(pull("smollm2-135m", progress=False)) == ModelArchConfig(
        architecture="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=False,
    )
