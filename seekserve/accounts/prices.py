"""What tokens cost: USD per million tokens by kind, per served model (spec §12).

Money is kept as integer nano-dollars (1e-9 USD) so sums are exact: a price of $0.028 per
million tokens is 28 nano-dollars per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

NANO_PER_USD = 10**9


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens."""

    cache_hit: float = 0.028
    cache_miss: float = 0.28
    output: float = 0.42
    """Defaults: DeepSeek V3.2's, the same for deepseek-chat and deepseek-reasoner."""

    def __post_init__(self) -> None:
        for name in ("cache_hit", "cache_miss", "output"):
            if getattr(self, name) < 0:
                raise ValueError(f"price {name} ({getattr(self, name)}) must be >= 0")

    def cost_nano(self, hit_tokens: int, miss_tokens: int, output_tokens: int) -> int:
        """The cost of one request in nano-dollars (rounded to the nearest)."""
        per_million = (
            Decimal(str(self.cache_hit)) * hit_tokens
            + Decimal(str(self.cache_miss)) * miss_tokens
            + Decimal(str(self.output)) * output_tokens
        )
        return int((per_million * NANO_PER_USD / 10**6).to_integral_value())


def usd_to_nano(amount: str | float | Decimal) -> int:
    """'12.5' → 12_500_000_000; more than 9 decimals is an error."""
    value = Decimal(str(amount))
    nano = value * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError(f"amount {amount} has more than 9 decimal places")
    return int(nano)


def nano_to_usd_text(nano: int) -> str:
    """Two decimals, rounded down (never shows more than there is), as DeepSeek's strings."""
    value = (Decimal(nano) / NANO_PER_USD).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    return f"{value:.2f}"
