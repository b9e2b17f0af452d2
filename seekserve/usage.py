"""The `usage` object of one request, in DeepSeek's shape and key order (spec §6)."""

from __future__ import annotations

from typing import Any

CACHE_UNIT_TOKENS = 64
"""DeepSeek counts context-cache hits in whole 64-token units."""


def cache_hit_tokens(num_cached_tokens: int) -> int:
    """Prompt tokens reported as cache hits: the reused prefix rounded down to 64 tokens."""
    return num_cached_tokens // CACHE_UNIT_TOKENS * CACHE_UNIT_TOKENS


def usage_dict(
    num_prompt_tokens: int,
    num_completion_tokens: int,
    num_cached_tokens: int = 0,
    num_reasoning_tokens: int = 0,
) -> dict[str, Any]:
    hit = cache_hit_tokens(num_cached_tokens)
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
        "prompt_tokens_details": {"cached_tokens": hit},
        "completion_tokens_details": {"reasoning_tokens": num_reasoning_tokens},
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": num_prompt_tokens - hit,
    }
