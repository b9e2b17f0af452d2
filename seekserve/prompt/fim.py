"""Fill-in-the-middle prompts: prefix + suffix → the model's FIM layout (PSM order)."""

from __future__ import annotations

from seekserve.prompt.tokenizer import Tokenizer


class NoFimTokens(ValueError):
    """The model's vocabulary has no fill-in-the-middle markers."""


def fim_prompt(tokenizer: Tokenizer, prefix: str, suffix: str | None) -> str:
    """The prompt text; without a suffix it is a plain completion of `prefix`."""
    if suffix is None:
        return prefix
    markers = tokenizer.fim_tokens
    if markers is None:
        raise NoFimTokens("this model has no fill-in-the-middle tokens")
    begin, hole, end = markers
    return f"{begin}{prefix}{hole}{suffix}{end}"
