"""API keys, balances and usage accounting (spec §8.10, §10, §12)."""
