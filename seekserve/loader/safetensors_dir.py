"""Hugging Face model directories: config.json + *.safetensors (single file or sharded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from seekserve.models.config import ModelArchConfig


def read_hf_arch_config(model_dir: Path) -> ModelArchConfig:
    return ModelArchConfig.from_hf_config(json.loads((model_dir / "config.json").read_text()))


def load_safetensors_weights(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file in the directory, cast to `dtype`."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            weights[name] = tensor.to(dtype)
    return weights
