"""Architecture name → model class, imported lazily."""

from __future__ import annotations

import importlib

from torch import nn

from seekserve.models.config import ModelArchConfig

_ARCHITECTURES = {
    "llama": ("seekserve.models.llama", "LlamaForCausalLM"),
    "qwen2": ("seekserve.models.llama", "LlamaForCausalLM"),  # llama + QKV bias
    "qwen3": ("seekserve.models.qwen3", "Qwen3ForCausalLM"),
    "gemma3": ("seekserve.models.gemma3", "Gemma3ForCausalLM"),  # text model (gemma3_text)
    "deepseek_v2": ("seekserve.models.deepseek_v3", "DeepseekV3ForCausalLM"),  # softmax router
    "deepseek_v3": ("seekserve.models.deepseek_v3", "DeepseekV3ForCausalLM"),
    "scripted": ("seekserve.models.scripted", "ScriptedForCausalLM"),  # tests: forced replies
}


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def build_model(cfg: ModelArchConfig) -> nn.Module:
    """Instantiate the module for `cfg.architecture` (weights uninitialised)."""
    if cfg.architecture not in _ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {cfg.architecture!r}; supported: "
            f"{', '.join(supported_architectures())}"
        )
    module_name, class_name = _ARCHITECTURES[cfg.architecture]
    return getattr(importlib.import_module(module_name), class_name)(cfg)
