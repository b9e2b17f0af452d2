"""Build scripted test models (`seekserve/models/scripted.py`): a model directory whose
"model" answers a prompt containing a key with a fixed token sequence.

    directory = build_scripted_model(
        tmp_path, tokenizer, {"call the weather tool": ["<tool", "_call>\\n{", '"name": "w"}']}
    )
    # a chat request whose user message is "call the weather tool" is answered with exactly
    # the ids of "<tool" + "_call>\\n{" + '"name": "w"}', then eos
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from seekserve.prompt.chat_template import ChatTemplate
from seekserve.prompt.tokenizer import Tokenizer

Piece = str | int
"""A reply piece: text encoded on its own (a special-token string maps to its one id), or a
raw token id."""


def encode_pieces(tokenizer: Tokenizer, pieces: list[Piece]) -> list[int]:
    """The reply ids: each piece encoded separately, so pieces set the token boundaries."""
    ids: list[int] = []
    for piece in pieces:
        ids.extend([piece] if isinstance(piece, int) else tokenizer.encode(piece))
    return ids


def encode_key(tokenizer: Tokenizer, key: str, template: ChatTemplate) -> list[int]:
    """The ids of `key`, checked to occur in the rendered prompt of a user message that is
    exactly `key` (byte-level BPE tokenizes a word differently after a space, so a key
    matches where it starts a message or a line)."""
    ids = tokenizer.encode(key)
    prompt = tokenizer.encode(template.render([{"role": "user", "content": key}]))
    if not any(prompt[i : i + len(ids)] == ids for i in range(len(prompt) - len(ids) + 1)):
        raise ValueError(
            f"script key {key!r} encodes to {ids}, which the chat prompt {prompt} does not "
            "contain; pick a key the template leaves alone (plain words work)"
        )
    return ids


def build_scripted_model(
    directory: Path,
    tokenizer: Tokenizer,
    scripts: dict[str, list[Piece]],
    chat_template: str | None = None,
) -> Path:
    """Write a scripted model directory: config.json (scripts as ids), an empty
    model.safetensors, and `tokenizer`'s tokenizer.json + tokenizer_config.json with
    `chat_template` (default: the tokenizer's own). Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    template_source = chat_template or tokenizer.chat_template
    template = ChatTemplate(template_source, tokenizer.bos_token, tokenizer.eos_token)
    eos_ids = sorted(tokenizer.eos_token_ids)
    main_eos = tokenizer.token_to_id(tokenizer.eos_token or "")
    if main_eos is not None:  # the model ends with the template's eos, first in the list
        eos_ids = [main_eos] + [i for i in eos_ids if i != main_eos]
    config = {
        "model_type": "scripted",
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 1,
        "intermediate_size": 1,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 1,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "eos_token_id": eos_ids,
        "scripts": [
            {"key": encode_key(tokenizer, key, template), "reply": encode_pieces(tokenizer, reply)}
            for key, reply in scripts.items()
        ],
    }
    (directory / "config.json").write_text(json.dumps(config))
    save_file({}, str(directory / "model.safetensors"))  # the loader wants a weights file
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": template_source,
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
            }
        )
    )
    return directory
