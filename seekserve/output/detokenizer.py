"""Incremental detokenization that never emits a broken UTF-8 character.

Decoding token by token is wrong for byte-level BPE (a character can span tokens) and for
tokenizers whose decode depends on the previous token (leading spaces). So each step decodes
a short window twice and emits the difference:

    token ids:  ... | prefix_offset ........ read_offset | new tokens |
    emitted  = decode(prefix_offset:) minus decode(prefix_offset:read_offset)

and waits while the new text ends in U+FFFD (an incomplete character).

Where the tokenizer is a `tokenizers.Tokenizer` (its `backend`), the library's `DecodeStream`
runs the same window algorithm in Rust, one call per token (a streamed token is event-loop CPU,
which the engine waits for at high concurrency); `tests/output/test_detokenizer.py` compares
the two on random ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.decoders import DecodeStream


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        backend: Any = getattr(tokenizer, "backend", None)
        self._backend = backend if isinstance(backend, BackendTokenizer) else None
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def add(self, new_token_ids: Sequence[int]) -> str:
        """Append tokens; return the text they complete (may be "")."""
        if self._backend is None:
            return self.add_windowed(new_token_ids)
        self.token_ids.extend(new_token_ids)
        step, backend = self._stream.step, self._backend
        return "".join([step(backend, token_id) or "" for token_id in new_token_ids])

    def add_windowed(self, new_token_ids: Sequence[int]) -> str:
        """`add` by two `decode` calls (the algorithm above, in Python): any `Decoder`."""
        self.token_ids.extend(new_token_ids)
        decode = self.tokenizer.decode
        skip = self.skip_special_tokens
        prefix_text = decode(self.token_ids[self._prefix_offset : self._read_offset], skip)
        full_text = decode(self.token_ids[self._prefix_offset :], skip)
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]
