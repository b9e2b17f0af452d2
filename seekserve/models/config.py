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
    # per-layer attention and rope variants (qwen3, gemma3)
    layer_types: tuple[str, ...] = ()
    """Per layer "full_attention" or "sliding_attention"; () when every layer is full."""
    sliding_window: int | None = None
    """Positions a sliding layer's query sees: (position - sliding_window, position]."""
    rope_local_theta: float | None = None
    """Rope theta of the sliding layers when it differs from `rope_theta` (gemma3)."""
    rope_scaling_type: str = "default"
    """Rope scaling of the full-attention layers ("default" = none, "linear", ...); a model
    rejects the types it does not implement."""
    rope_scaling_factor: float = 1.0
    query_pre_attn_scalar: float | None = None
    """Attention scale is query_pre_attn_scalar**-0.5 when set (gemma3), else head_dim**-0.5."""
    attn_logit_softcapping: float | None = None
    """cap * tanh(score / cap) on attention scores when set."""
    final_logit_softcapping: float | None = None
    """cap * tanh(logit / cap) on the output logits when set."""
    kv_lora_rank: int = 0
    """Multi-head latent attention (deepseek_v2/v3): width of the compressed KV latent, which
    is what the cache stores; 0 for standard attention."""
    qk_rope_head_dim: int = 0
    """Multi-head latent attention: width of the rope'd key part shared by all heads."""
    hf_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The config.json this was read from ({} for GGUF): settings beyond these fields, such as
    the scripted test model's scripts."""

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.layer_types and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        if unknown := set(self.layer_types) - set(_LAYER_TYPES):
            raise ValueError(f"unknown layer types {sorted(unknown)}; known: {_LAYER_TYPES}")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("sliding_attention layers need a positive sliding_window")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelArchConfig:
        """Build from a Hugging Face `config.json` dictionary (a multimodal gemma3 config:
        from its text model's)."""
        cfg = _text_config(cfg)
        model_type = _ARCHITECTURE_ALIASES.get(cfg["model_type"], cfg["model_type"])
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
            rope_theta=_rope_parameters(cfg, "full_attention")[0],
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            **_attention_fields(cfg),
            kv_lora_rank=cfg.get("kv_lora_rank") or 0,
            qk_rope_head_dim=cfg.get("qk_rope_head_dim") or 0,
            hf_config=cfg,
        )


# --- per-layer attention and rope variants (qwen3, gemma3) ---

_LAYER_TYPES = ("full_attention", "sliding_attention")
# Hugging Face model_type → our registry key (GGUF names the gemma3 text model "gemma3")
_ARCHITECTURE_ALIASES = {"gemma3_text": "gemma3"}
# Gemma3TextConfig's defaults: multimodal gemma3 checkpoints list only the text model's
# settings that differ from them
_GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
}


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's settings: a multimodal gemma3 config wraps them in `text_config`."""
    if cfg["model_type"] == "gemma3" and "text_config" in cfg:
        cfg = {"model_type": "gemma3_text", **(cfg["text_config"] or {})}
    if cfg["model_type"] == "gemma3_text":
        cfg = {**_GEMMA3_TEXT_DEFAULTS, **cfg}
    return cfg


def _rope_parameters(cfg: dict[str, Any], layer_type: str) -> tuple[float, str, float]:
    """(theta, scaling type, scaling factor) of one layer type, from transformers 5's
    `rope_parameters` (flat, or keyed by layer type as gemma3 saves it) or the older
    `rope_theta` / `rope_scaling` (+ gemma3's `rope_local_base_freq` for sliding layers)."""
    params = cfg.get("rope_parameters") or {}
    if any(t in params for t in _LAYER_TYPES):
        params = params.get(layer_type) or {}
    if layer_type == "sliding_attention" and "rope_local_base_freq" in cfg:
        legacy = {"rope_theta": cfg["rope_local_base_freq"]}
    else:
        legacy = {**(cfg.get("rope_scaling") or {}), "rope_theta": cfg.get("rope_theta")}
    merged = {k: v for k, v in {**legacy, **params}.items() if v is not None}
    scaling_type = merged.get("rope_type") or merged.get("type") or "default"
    return float(merged.get("rope_theta", 10000.0)), scaling_type, float(merged.get("factor", 1.0))


def _layer_types(cfg: dict[str, Any]) -> tuple[str, ...]:
    """Per-layer attention kind: `layer_types` when given, else gemma3's pattern (every
    `sliding_window_pattern`-th layer full) or qwen's `use_sliding_window` (sliding from layer
    `max_window_layers` on); () when every layer is full."""
    num_layers = cfg["num_hidden_layers"]
    if cfg.get("layer_types"):
        types = tuple(cfg["layer_types"])[:num_layers]
    elif pattern := cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern"):
        types = tuple(_LAYER_TYPES[bool((i + 1) % pattern)] for i in range(num_layers))
    elif cfg.get("use_sliding_window") and cfg.get("sliding_window"):
        first = cfg.get("max_window_layers", num_layers)
        types = tuple(_LAYER_TYPES[i >= first] for i in range(num_layers))
    else:
        types = ()
    return types if "sliding_attention" in types else ()


def _attention_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """The per-layer attention and rope fields of `ModelArchConfig` read from config.json."""
    layer_types = _layer_types(cfg)
    _, scaling_type, scaling_factor = _rope_parameters(cfg, "full_attention")
    local_theta, local_scaling, _ = _rope_parameters(cfg, "sliding_attention")
    if layer_types and local_scaling != "default":
        raise ValueError(
            f"rope scaling {local_scaling!r} of sliding-window layers is not supported"
        )
    return {
        "layer_types": layer_types,
        "sliding_window": cfg.get("sliding_window") if layer_types else None,
        "rope_local_theta": local_theta if layer_types else None,
        "rope_scaling_type": scaling_type,
        "rope_scaling_factor": scaling_factor,
        "query_pre_attn_scalar": cfg.get("query_pre_attn_scalar"),
        "attn_logit_softcapping": cfg.get("attn_logit_softcapping"),
        "final_logit_softcapping": cfg.get("final_logit_softcapping"),
    }
