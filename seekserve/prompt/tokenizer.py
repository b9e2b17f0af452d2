"""The tokenizer of a model: text <-> token ids, special tokens, chat template.

Owns: building one `tokenizers.Tokenizer` from a GGUF header (through transformers' GGUF
tokenizer conversion) or from a Hugging Face directory, and the facts the rest of the server
needs about it (end-of-generation ids, bos/eos strings, chat template). Knows nothing about
requests, the engine or HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers

logger = logging.getLogger(__name__)

# Control tokens llama.cpp treats as end-of-generation when the GGUF does not list them itself
# (llama-vocab.cpp); e.g. Qwen2.5 GGUFs name <|im_end|> as eos, but the model may also end
# with <|endoftext|>, which Hugging Face's generation_config.json lists too.
_END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<EOT>",
        "_<EOT>",
        "<｜end▁of▁sentence｜>",
        # fill-in-the-middle padding and repository-level separators (llama.cpp's fim_pad,
        # fim_rep, fim_sep): a FIM model that writes one has finished the middle
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    }
)
_GGUF_CONTROL_TOKEN_TYPE = 3


class Tokenizer:
    """A fast tokenizer plus the special-token facts generation needs.

    `encode` adds no bos/eos (chat templates write them as text), but recognises special-token
    strings such as `<|im_start|>` inside the text and maps each to its single id.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        eos_token_ids: Iterable[int],
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self._backend = backend
        self._eos_token_ids = frozenset(eos_token_ids)
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._chat_template = chat_template or None
        self.add_bos_token = add_bos_token
        """True when the model expects a bos id before a prompt not rendered by a template."""
        added = backend.get_added_tokens_decoder()
        self._all_special_ids = frozenset(tid for tid, token in added.items() if token.special)
        self._added_ids = frozenset(added)
        self._is_byte_level = isinstance(backend.decoder, tokenizers.decoders.ByteLevel)
        self._token_bytes: dict[int, bytes] = {}

    # ---- constructors -------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Build from the `tokenizer.*` metadata of a GGUF file."""
        start_s = time.perf_counter()
        try:
            from transformers.integrations.gguf import (
                convert_gguf_tokenizer,
                get_gguf_tokenizer,
                read_gguf_metadata,
            )
        except ImportError as exc:  # the module moved in transformers 5
            raise ImportError(
                "building a tokenizer from a GGUF file needs transformers with "
                "transformers.integrations.gguf (5.x); upgrade transformers"
            ) from exc
        architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(path))
        backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
        metadata, _ = read_gguf_metadata(str(path))
        eos_token_ids = _gguf_end_of_generation_ids(metadata, tokenizer_dict)
        tokenizer = cls(
            backend,
            eos_token_ids=eos_token_ids,
            bos_token=tokenizer_config.get("bos_token"),
            eos_token=tokenizer_config.get("eos_token"),
            chat_template=tokenizer_config.get("chat_template"),
            add_bos_token=bool(tokenizer_config.get("add_bos_token", False)),
        )
        logger.info(
            "tokenizer from %s: %d tokens, pre-tokenizer %r, eos ids %s (%.2f s)",
            path,
            tokenizer.vocab_size,
            tokenizer_dict.get("pre_tokenizer_type"),
            sorted(eos_token_ids),
            time.perf_counter() - start_s,
        )
        return tokenizer

    @classmethod
    def from_pretrained_dir(cls, path: str | Path) -> Tokenizer:
        """Build from a Hugging Face directory: tokenizer.json, tokenizer_config.json, and
        (optional) chat_template.jinja, generation_config.json, config.json."""
        root = Path(path)
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{root} has no tokenizer.json (a fast tokenizer is needed)")
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        config = _read_json(root / "tokenizer_config.json")
        bos_token = _token_content(config.get("bos_token"))
        eos_token = _token_content(config.get("eos_token"))
        eos_token_ids = set(_hf_eos_ids(root))
        if eos_token is not None and (eos_id := backend.token_to_id(eos_token)) is not None:
            eos_token_ids.add(eos_id)
        return cls(
            backend,
            eos_token_ids=eos_token_ids,
            bos_token=bos_token,
            eos_token=eos_token,
            chat_template=_hf_chat_template(root, config),
            add_bos_token=bool(config.get("add_bos_token", False)),
        )

    # ---- text <-> ids -------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no bos/eos added, special-token strings recognised."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (incomplete UTF-8 at the end shows as U+FFFD)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for; a byte-level token may hold only part of a
        UTF-8 character (logprobs report these bytes)."""
        cached = self._token_bytes.get(token_id)
        if cached is None:
            cached = self._token_bytes[token_id] = self._raw_token_bytes(token_id)
        return cached

    def _raw_token_bytes(self, token_id: int) -> bytes:
        piece = self._backend.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._added_ids:
            return piece.encode()
        if self._is_byte_level:
            return bytes(_BYTE_OF_CHAR.get(char, 0) for char in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        return piece.replace("\u2581", " ").encode()

    @property
    def fim_tokens(self) -> tuple[str, str, str] | None:
        """(prefix, suffix, middle) markers of fill-in-the-middle, if the vocabulary has them."""
        for markers in _FIM_MARKERS:
            if all(self._backend.token_to_id(m) is not None for m in markers):
                return markers
        return None

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry, or None."""
        return self._backend.token_to_id(token)

    # ---- facts --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every id that ends generation (eos, end-of-turn, end-of-message)."""
        return self._eos_token_ids

    @property
    def bos_token(self) -> str | None:
        """The bos string chat templates render as `bos_token`."""
        return self._bos_token

    @property
    def eos_token(self) -> str | None:
        """The eos string chat templates render as `eos_token`."""
        return self._eos_token

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped with the model (untrusted text), or None."""
        return self._chat_template

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids of the special (control) tokens, which `decode` drops by default."""
        return self._all_special_ids

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (for incremental detokenizers)."""
        return self._backend


def _gguf_end_of_generation_ids(
    metadata: dict[str, Any], tokenizer_dict: dict[str, Any]
) -> set[int]:
    """eos, eot and eom ids from the header, plus control tokens llama.cpp treats as such."""
    ids = {
        int(metadata[key])
        for key in (
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        )
        if metadata.get(key) is not None
    }
    tokens = tokenizer_dict.get("tokens") or []
    token_types = tokenizer_dict.get("token_type") or []
    for token_id, (token, token_type) in enumerate(zip(tokens, token_types, strict=False)):
        if token_type == _GGUF_CONTROL_TOKEN_TYPE and token in _END_OF_GENERATION_TEXTS:
            ids.add(token_id)
    return ids


# fill-in-the-middle markers, in prefix-suffix-middle order, by model family
_FIM_MARKERS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    (
        "<\uff5cfim\u2581begin\uff5c>",
        "<\uff5cfim\u2581hole\uff5c>",
        "<\uff5cfim\u2581end\uff5c>",
    ),  # DeepSeek
)


def _byte_of_char() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable character map used by byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars = {byte: byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = 256 + extra
            extra += 1
    return {chr(char): byte for byte, char in chars.items()}


_BYTE_OF_CHAR = _byte_of_char()


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def _token_content(token: str | dict[str, Any] | None) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def _hf_eos_ids(root: Path) -> list[int]:
    """eos ids from generation_config.json, else config.json (an int or a list)."""
    for name in ("generation_config.json", "config.json"):
        value = _read_json(root / name).get("eos_token_id")
        if value is not None:
            return [value] if isinstance(value, int) else list(value)
    return []


def _hf_chat_template(root: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config's template (a string or named list)."""
    jinja_file = root / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {entry["name"]: entry["template"] for entry in template}
        return named.get("default")
    return template
