"""GGUF files: architecture hyper-parameters and dequantized, Hugging Face-named weights.

Owns: reading a GGUF header into a `ModelArchConfig`, and turning every GGUF tensor into a
torch tensor with the name, shape and row order a Hugging Face `LlamaForCausalLM` /
`Qwen2ForCausalLM` checkpoint has. Knows nothing about model modules, tokenizers or devices.

Dequantization is done with the GGUF project's own numpy code (`gguf.quants.dequantize`), one
tensor at a time, so peak memory is the loaded model plus one float32 tensor.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import GGML_QUANT_SIZES, dequantize

from seekserve.loader.progress import loading
from seekserve.models.config import ModelArchConfig

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# GGUF per-layer tensor stem -> Hugging Face module path inside `model.layers.{i}`
_LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
# The types SeekServe tests (tests/loader/test_gguf_types.py); others load when `gguf` can
# dequantize them.
TESTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
_MISSING = object()


def read_gguf_arch_config(path: str | Path) -> ModelArchConfig:
    """The architecture hyper-parameters stored in a GGUF header.

    Raises `ValueError` when the architecture is not one of `SUPPORTED_ARCHITECTURES` or a
    required key is missing.
    """
    return _arch_config(_open(path))


def check_gguf_file(path: str | Path) -> ModelArchConfig:
    """The header's architecture config, after checking (without reading tensor data) that
    every tensor has a Hugging Face name and a type we can dequantize; ValueError naming the
    first offender. Cheap: the file is memory-mapped and only the header is parsed."""
    reader = _open(path)
    config = _arch_config(reader)
    for tensor in reader.tensors:
        hf_tensor_name(tensor.name)
        _check_dequantizable(tensor)
    return config


def load_gguf_weights(path: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file, dequantized to `dtype` and keyed by its Hugging Face name.

    Linear weights come out as (out_features, in_features). For arch `llama` the rows of the
    q/k projections are put back in Hugging Face order (llama.cpp's converter interleaves them
    for its rope); the result equals the original checkpoint up to quantization error.
    """
    start_s = time.perf_counter()
    reader = _open(path)
    config = _arch_config(reader)
    names = {tensor.name: hf_tensor_name(tensor.name) for tensor in reader.tensors}
    for tensor in reader.tensors:
        _check_dequantizable(tensor)
    weights: dict[str, torch.Tensor] = {}
    for tensor in loading(reader.tensors, f"loading {Path(path).name}"):
        weight = torch.from_numpy(_dequantize(tensor))
        if config.architecture == "llama":
            weight = _unpermute_qk(tensor.name, weight, config)
        weights[names[tensor.name]] = weight.to(dtype)
    logger.info(
        "loaded %d tensors (%.1f M parameters) from %s as %s in %.2f s",
        len(weights),
        sum(weight.numel() for weight in weights.values()) / 1e6,
        path,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - start_s,
    )
    return weights


def hf_tensor_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; ValueError if unknown."""
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    match = _LAYER_TENSOR_RE.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_TENSOR_NAMES:
        raise ValueError(
            f"GGUF tensor {gguf_name!r} has no Hugging Face counterpart in SeekServe's loader "
            "(unsupported model feature, e.g. rope scaling factors or MoE experts)"
        )
    layer, stem, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_TENSOR_NAMES[stem]}.{kind}"


def unpermute_qk_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rope -> Hugging Face rotate_half).

    llama.cpp stores, per head, rows in the order (0, d/2, 1, d/2+1, ...): it reshapes the
    (num_heads * head_dim, ...) weight to (num_heads, 2, head_dim/2, ...) and swaps axes 1, 2.
    This reshapes to (num_heads, head_dim/2, 2, ...) and swaps back. Works on weights and biases.
    """
    rows = weight.shape[0]
    half_head_dim = rows // num_heads // 2
    assert num_heads * half_head_dim * 2 == rows, (rows, num_heads)
    split = weight.reshape(num_heads, half_head_dim, 2, *weight.shape[1:])
    return split.transpose(1, 2).reshape(weight.shape)


def _open(path: str | Path) -> GGUFReader:
    """A memory-mapped reader; ValueError with the path when the file is not a GGUF."""
    try:
        return GGUFReader(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc


def _field(reader: GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The decoded value of one metadata key (scalar, string or list)."""
    field = reader.get_field(key)
    if field is None:
        if default is _MISSING:
            raise ValueError(f"GGUF file {reader.data.filename} lacks the metadata key {key!r}")
        return default
    return field.contents()


def _float32_value(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _arch_config(reader: GGUFReader) -> ModelArchConfig:
    """Build the config from an open reader (see `read_gguf_arch_config`)."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    hidden_size = int(_field(reader, f"{arch}.embedding_length"))
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    tensor_names = {tensor.name for tensor in reader.tensors}
    _warn_on_rope_scaling(reader, arch)
    return ModelArchConfig(
        architecture=arch,
        vocab_size=_vocab_size(reader),
        hidden_size=hidden_size,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden_size // num_heads)),
        rms_norm_eps=_float32_value(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=_float32_value(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
    )


def _vocab_size(reader: GGUFReader) -> int:
    """Rows of the token embedding; else the tokenizer's token count."""
    for tensor in reader.tensors:
        if tensor.name == "token_embd.weight":
            return int(tensor.shape[-1])  # ggml order: (hidden, vocab)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"GGUF file {reader.data.filename} has neither token_embd nor tokens")
    return len(tokens.data)


def _warn_on_rope_scaling(reader: GGUFReader, arch: str) -> None:
    """Rope scaling is not modelled by `ModelArchConfig`; say so instead of failing."""
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        logger.warning(
            "GGUF declares rope scaling %r, which SeekServe ignores; outputs past the "
            "original context length may degrade",
            scaling,
        )


def _check_dequantizable(tensor: ReaderTensor) -> None:
    """ValueError naming the tensor and its type when `gguf` cannot dequantize it."""
    if not _can_dequantize(tensor.tensor_type):
        raise ValueError(
            f"GGUF tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the gguf "
            "package cannot dequantize; use a file quantized as "
            f"{', '.join(TESTED_TENSOR_TYPES)} (or another type gguf.quants can dequantize)"
        )


@functools.cache
def _can_dequantize(qtype: GGMLQuantizationType) -> bool:
    """True when `gguf.quants.dequantize` implements `qtype` (tried on one zero block)."""
    if qtype in _FLOAT_TYPES:
        return True
    _, type_size = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _dequantize(tensor: ReaderTensor) -> np.ndarray:
    """float32 array in torch order: (rows, cols) for a matrix, (n,) for a vector."""
    values = dequantize(tensor.data, tensor.tensor_type)
    torch_shape = tuple(int(dim) for dim in reversed(tensor.shape))
    values = values.reshape(torch_shape)
    # F32 comes back as a view of the read-only memory map; torch needs writable memory.
    if not values.flags.writeable:
        values = values.copy()
    return values


def _unpermute_qk(gguf_name: str, weight: torch.Tensor, config: ModelArchConfig) -> torch.Tensor:
    """Apply `unpermute_qk_rows` to attn_q / attn_k tensors; leave others alone."""
    if ".attn_q." in gguf_name:
        return unpermute_qk_rows(weight, config.num_attention_heads)
    if ".attn_k." in gguf_name:
        return unpermute_qk_rows(weight, config.num_key_value_heads)
    return weight
