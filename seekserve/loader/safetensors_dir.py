"""Hugging Face model directories: config.json + *.safetensors (single file or sharded).

Owns: reading `config.json` into a `ModelArchConfig` and every weight of the directory into
torch tensors under their checkpoint names. A sharded checkpoint is read through its
`model.safetensors.index.json` (the files it lists, each once); without an index, every
`*.safetensors` file in the directory is read. Knows nothing about tokenizers or devices.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from seekserve.loader.progress import loading
from seekserve.models.config import ModelArchConfig

INDEX_FILENAME = "model.safetensors.index.json"


def read_hf_arch_config(model_dir: Path) -> ModelArchConfig:
    """The architecture in `config.json`; ValueError naming the directory when it is missing
    or lacks a required key."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model_dir} has no config.json; is it a Hugging Face model directory?")
    try:
        return ModelArchConfig.from_hf_config(json.loads(config_file.read_text()))
    except KeyError as exc:
        raise ValueError(f"{config_file} lacks the key {exc.args[0]!r}") from None


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding the weights: the shards the index names (in order of
    first appearance), else every `*.safetensors` file sorted by name."""
    index_file = model_dir / INDEX_FILENAME
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index_file} names shards that are not in {model_dir}: {', '.join(missing)}; "
                "the download is incomplete"
            )
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    return files


def load_safetensors_weights(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's weight files, cast to `dtype`. With an index, every
    tensor it lists must be found in the shard it names."""
    weights: dict[str, torch.Tensor] = {}
    for file in loading(weight_files(model_dir), f"loading {model_dir.name}"):
        for name, tensor in load_file(str(file)).items():
            weights[name] = tensor.to(dtype)
    index_file = model_dir / INDEX_FILENAME
    if index_file.is_file():
        listed = json.loads(index_file.read_text())["weight_map"]
        absent = sorted(set(listed) - set(weights))
        if absent:
            raise ValueError(f"{index_file} lists tensors no shard holds: {absent[:5]}")
    return weights
