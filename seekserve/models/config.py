"""The architecture hyper-parameters a model module is built from.

Owns: one frozen description of a decoder-only transformer, filled either from a GGUF header
(`loader/gguf.py`) or from a Hugging Face `config.json` (`from_hf_config`). Knows nothing
about files, tokenizers or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelArchConfig:
    architecture: str
    """Registry key of the model module, e.g. "llama"."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    """Context length the weights were trained for (the default max_model_len)."""
    tie_word_embeddings: bool
    """True when the LM head reuses the token embedding matrix."""
    attention_bias: bool = False
    """True when q/k/v projections carry a bias (qwen2)."""
    hf_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The config.json this was read from ({} for GGUF): settings beyond these fields, such as
    the scripted test model's scripts."""

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelArchConfig:
        """Build from a Hugging Face `config.json` dictionary."""
        model_type = cfg["model_type"]
        num_heads = cfg["num_attention_heads"]
        return cls(
            architecture=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta")
            or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            hf_config=cfg,
        )
