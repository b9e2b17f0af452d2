"""Per-request generation knobs, validated before they reach the engine.

The API layer converts wire requests into these (precedence: request → server default → API
default, see `api/protocol.py`); the engine trusts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """What a request's output is constrained to (compiled by sampling/constraints.py)."""

    kind: Literal["json_object", "structural_tag"]
    source: str = ""
    """For "structural_tag": the xgrammar structural tag, as JSON text."""
    end_when_complete: bool = True
    """End generation as soon as the grammar can end (else the model ends it by EOS)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    """Most tokens to generate."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    frequency_penalty: float = 0.0
    """OpenAI formula: logit -= frequency_penalty * count(token in output)."""
    presence_penalty: float = 0.0
    """OpenAI formula: logit -= presence_penalty * (count(token in output) > 0)."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; matched on decoded text, excluded from the output."""
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    """Token ids that end generation besides the tokenizer's EOS ids (the token is dropped)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks)."""
    logprobs: int | None = None
    """None: no logprobs. k in [0, 20]: each token's logprob and the k most likely tokens."""
    grammar: GrammarSpec | None = None
    """None: free text. Else the output follows the grammar (JSON mode, tool calls)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be >= 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature ({self.temperature}) must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p ({self.top_p}) must be in (0, 1]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs ({self.logprobs}) must be in [0, 20]")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} ({value}) must be in [-2, 2]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
