"""Grammar-constrained decoding with xgrammar: token masks per request, applied in the batch.

`GrammarFactory` is built once per served model from its tokenizer (above the engine, which
knows no tokenizer) and injected into the engine; it compiles grammars and hands each
constrained request its own `GrammarConstraint` (an xgrammar matcher). Each step the sampler
fills one bitmask row per constrained request and masks only those rows of the logits, so
unconstrained requests in the same batch pay nothing.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
import xgrammar as xgr

from seekserve.sampling_params import GrammarSpec

# The JSON object grammar emits compact JSON: unbounded whitespace lets small models loop.
_JSON_OBJECT_SCHEMA = {"type": "object"}


class GrammarConstraint:
    """One request's position in its grammar. With `end_when_complete` generation ends as
    soon as the grammar can end (a JSON object closed); without it the model decides, by
    EOS, among what the grammar allows (another tool call, or the end)."""

    def __init__(self, matcher: xgr.GrammarMatcher, end_when_complete: bool = True) -> None:
        self._matcher = matcher
        self._end_when_complete = end_when_complete
        self.error: str | None = None
        """Set when the matcher failed: the request ends with this error, alone — a fault
        in one request's grammar never fails the batch it runs in."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.error is not None:
            return  # the row stays all-allowed; the request ends at its next token
        try:
            self._matcher.fill_next_token_bitmask(bitmask, row)
        except Exception as exc:
            self.error = f"grammar failed: {exc}"

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar refuses it (or failed)."""
        if self.error is not None:
            return False
        try:
            return bool(self._matcher.accept_token(token_id))
        except Exception as exc:
            self.error = f"grammar failed: {exc}"
            return False

    @property
    def is_complete(self) -> bool:
        """Generation must end here."""
        if self._matcher.is_terminated():
            return True
        return self._end_when_complete and bool(self._matcher.is_completed())


class GrammarFactory:
    """Compiles grammars for one tokenizer (lazily: the first constrained request pays)."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = stop_token_ids

    @functools.cached_property
    def _compiler(self) -> xgr.GrammarCompiler:
        info = xgr.TokenizerInfo.from_huggingface(
            self._hf_tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_token_ids
        )
        return xgr.GrammarCompiler(info)

    @functools.cached_property
    def _json_object(self) -> xgr.CompiledGrammar:
        return self._compiler.compile_json_schema(
            json.dumps(_JSON_OBJECT_SCHEMA), any_whitespace=False
        )

    def build(self, spec: GrammarSpec) -> GrammarConstraint:
        if spec.kind == "json_object":
            return self.json_object()
        return self.structural_tag(spec.source, spec.end_when_complete)

    def json_object(self) -> GrammarConstraint:
        return GrammarConstraint(xgr.GrammarMatcher(self._json_object))

    def compile_structural_tag(self, spec: str) -> xgr.CompiledGrammar:
        """Compile (cached by the spec's text); raises ValueError for a spec or schema
        xgrammar cannot compile."""
        try:
            return self._structural_tag(spec)
        except Exception as exc:  # xgrammar raises RuntimeError / its own errors
            raise ValueError(f"cannot compile the grammar: {exc}") from exc

    @functools.lru_cache(maxsize=128)  # noqa: B019 - one factory per served model
    def _structural_tag(self, spec: str) -> xgr.CompiledGrammar:
        return self._compiler.compile_structural_tag(spec)

    def structural_tag(self, spec: str, end_when_complete: bool) -> GrammarConstraint:
        compiled = self.compile_structural_tag(spec)
        return GrammarConstraint(xgr.GrammarMatcher(compiled), end_when_complete)


def apply_constraints(
    logits: torch.Tensor, constraints: list[GrammarConstraint | None]
) -> torch.Tensor:
    """Logits with every token a row's grammar forbids set to -inf (a new tensor when any
    row is constrained)."""
    rows = [row for row, c in enumerate(constraints) if c is not None]
    if not rows:
        return logits
    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[-1])
    for index, row in enumerate(rows):
        constraints[row].fill_bitmask(bitmask, index)  # type: ignore[union-attr]
    masked = logits.clone()
    sub = masked[rows]
    xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device))
    masked[rows] = sub
    return masked
