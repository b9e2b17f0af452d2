"""Build a model module and fill it from a GGUF file or a Hugging Face directory."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch
from torch import nn

from seekserve.models.config import ModelArchConfig
from seekserve.models.registry import build_model

logger = logging.getLogger(__name__)


def read_arch_config(path: Path) -> ModelArchConfig:
    if path.is_dir():
        from seekserve.loader.safetensors_dir import read_hf_arch_config

        return read_hf_arch_config(path)
    from seekserve.loader.gguf import read_gguf_arch_config

    return read_gguf_arch_config(path)


def check_model_files(path: Path) -> ModelArchConfig:
    """Fail fast, before any weight is read, on what `load_model` would reject: an
    architecture without a model module, and (GGUF) tensors without a Hugging Face name or of
    a type that cannot be dequantized. Returns the architecture config."""
    from seekserve.models.registry import supported_architectures

    if path.is_dir():
        cfg = read_arch_config(path)
    else:
        from seekserve.loader.gguf import check_gguf_file

        cfg = check_gguf_file(path)
    if cfg.architecture not in supported_architectures():
        raise ValueError(
            f"{path}: unsupported architecture {cfg.architecture!r}; supported: "
            f"{', '.join(supported_architectures())}"
        )
    return cfg


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied tensor counted once)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def load_weights(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if path.is_dir():
        from seekserve.loader.safetensors_dir import load_safetensors_weights

        return load_safetensors_weights(path, dtype)
    from seekserve.loader.gguf import load_gguf_weights

    return load_gguf_weights(path, dtype)


def load_model(
    path: Path, dtype: torch.dtype, device: torch.device | str
) -> tuple[nn.Module, ModelArchConfig]:
    """The model in eval mode on `device`, every parameter in `dtype`."""
    start = time.perf_counter()
    cfg = read_arch_config(path)
    with torch.device("meta"):
        model = build_model(cfg)
    weights = load_weights(path, dtype)
    if cfg.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    weights = stack_params(weights, getattr(model, "stacked_params", {}))
    missing, unexpected = _check_names(model, weights)
    if missing or unexpected:
        raise ValueError(
            f"weights of {path} do not match architecture {cfg.architecture!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(weights, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers (rotary tables) were created on the meta device: compute them for real
    with torch.device("cpu"):
        for module in model.modules():
            if hasattr(module, "init_buffers"):
                module.init_buffers()
    model.to(device).eval()
    logger.info(
        "loaded %s (%s, %d layers) in %.1f s",
        path.name,
        cfg.architecture,
        cfg.num_hidden_layers,
        time.perf_counter() - start,
    )
    return model, cfg


def model_fingerprint(path: Path, sample_bytes: int = 1 << 20) -> str:
    """A cheap content fingerprint of a model file or directory: names, sizes and sha256 of
    the first and last MiB of each weight file. Keys the prefix cache's disk tier, so blocks
    of one model are never served to another that later sits at the same path."""
    files = sorted(path.glob("*.safetensors")) + [path / "config.json"] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}:".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(sample_bytes))
            handle.seek(max(0, size - sample_bytes))
            digest.update(handle.read(sample_bytes))
    return digest.hexdigest()[:32]


def stack_params(
    weights: dict[str, torch.Tensor], stacked: dict[str, tuple[str, ...]]
) -> dict[str, torch.Tensor]:
    """Concatenate checkpoint tensors into the model's fused parameters (dim 0):
    `...self_attn.q_proj.weight`, `k_proj`, `v_proj` → `...self_attn.qkv_proj.weight`."""
    out = dict(weights)
    for fused, parts in stacked.items():
        first = f".{parts[0]}."
        for name in [n for n in weights if first in n]:
            names = [name.replace(first, f".{part}.") for part in parts]
            if all(n in out for n in names):
                out[name.replace(first, f".{fused}.")] = torch.cat([out.pop(n) for n in names])
    return out


def _check_names(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list, list]:
    expected = {n for n, _ in model.named_parameters()}
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    got = set(weights)
    # unknown extras such as rotary inv_freq buffers in old checkpoints are not fatal
    unexpected = sorted(n for n in got - expected if not n.endswith("rotary_emb.inv_freq"))
    return sorted(expected - got), unexpected
