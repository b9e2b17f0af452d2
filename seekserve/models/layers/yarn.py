"""YaRN rope scaling: inverse frequencies and attention factors (arXiv 2309.00071).

The same numbers as transformers' `_compute_yarn_parameters`: each rotary frequency is a blend
of extrapolation (kept as trained: high frequencies, which complete many turns within the
original context) and interpolation (divided by `factor`: low frequencies), with a linear ramp
between the dims that complete `beta_fast` and `beta_slow` turns over the original context.

    dim i:   0 ........ low ======== high ........ dim/2
             extrapolate    ramp        interpolate

Reads only a rope-parameter dict (config.json's `rope_parameters`, or `rope_scaling` in older
checkpoints); knows nothing about models.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_parameters(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The rope dict of a config.json with `rope_type` filled in ("default" when unscaled)."""
    params = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context `scale` times longer (1 when not longer)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_factor(params: dict[str, Any], max_position_embeddings: int) -> float:
    """The context scale: `factor`, else max_position_embeddings / the original length."""
    factor = params.get("factor")
    if factor is None:
        original_len = params.get("original_max_position_embeddings") or max_position_embeddings
        return max_position_embeddings / original_len
    return float(factor)


def yarn_inv_freq(
    dim: int, theta: float, params: dict[str, Any], max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """(inv_freq (dim/2,) fp32, attention factor that scales cos and sin) for a YaRN rope."""
    original_len = params.get("original_max_position_embeddings") or max_position_embeddings
    factor = yarn_factor(params, max_position_embeddings)
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(
                factor, mscale_all_dim
            )
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # the dim whose frequency completes `num_rotations` turns over the original context
        return (dim * math.log(original_len / (num_rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp

    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1 for the high-frequency dims kept as trained
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (
        1.0 / pos_freqs
    ) * extrapolation
    return inv_freq, float(attention_factor)
