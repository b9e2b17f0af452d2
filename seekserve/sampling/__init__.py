"""Turning logits into tokens for a whole batch at once."""
