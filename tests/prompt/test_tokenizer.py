"""Tokenizer: the real SmolLM2 GGUF tokenizer against transformers, and a Hugging Face dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from seekserve.loader.sources import pull
from seekserve.prompt.tokenizer import Tokenizer

TEXTS = [
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "héllo 😀 你好世界",
    "def f(x):\n    return x**2  # 12345\n\n\n",
    "  leading spaces,\ttabs and trailing   ",
    "In 2024, I had 3 cats; x=10.5",
    "",
]


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    """The real SmolLM2 GGUF, pulled into the default SEEKSERVE_HOME once."""
    return pull("smollm2-135m", progress=False)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def reference(smollm2_path: Path):
    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tokenizer: Tokenizer, reference, text: str) -> None:
    assert tokenizer.encode(text) == reference(text, add_special_tokens=False).input_ids


def test_special_token_strings_become_single_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n") == [1, 4093, 198, 26843, 2, 198]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_decode_skips_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n")
    assert tokenizer.decode(ids) == "user\nHi\n"


def test_special_token_facts(tokenizer: Tokenizer) -> None:
    im_end = tokenizer.token_to_id("<|im_end|>")
    assert im_end == 2
    # GGUF eos (<|im_end|>) plus <|endoftext|>, which llama.cpp also ends generation on.
    assert tokenizer.eos_token_ids == frozenset({0, 2})
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.vocab_size == 49152
    assert tokenizer.all_special_ids == frozenset(range(17))
    assert tokenizer.add_bos_token is False


def test_chat_template(tokenizer: Tokenizer) -> None:
    assert tokenizer.chat_template is not None
    assert "<|im_start|>" in tokenizer.chat_template
    assert "add_generation_prompt" in tokenizer.chat_template


# ---- Hugging Face directory -----------------------------------------------------------


def write_hf_dir(directory: Path, tokenizer: Tokenizer, jinja_template: str | None) -> Path:
    """tokenizer.json from the GGUF tokenizer plus the config files of an HF checkpoint."""
    directory.mkdir()
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<|im_start|>", "special": True},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "default", "template": "{{ messages }}"},
            {"name": "tool_use", "template": "{{ tools }}"},
        ],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    if jinja_template is not None:
        (directory / "chat_template.jinja").write_text(jinja_template)
    return directory


def test_from_pretrained_dir(tmp_path: Path, tokenizer: Tokenizer) -> None:
    hf = Tokenizer.from_pretrained_dir(write_hf_dir(tmp_path / "hf", tokenizer, None))
    assert hf.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    assert hf.eos_token_ids == frozenset({2, 7})
    assert (hf.bos_token, hf.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert hf.chat_template == "{{ messages }}"
    assert hf.all_special_ids == tokenizer.all_special_ids


def test_from_pretrained_dir_prefers_chat_template_jinja(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    hf = Tokenizer.from_pretrained_dir(write_hf_dir(tmp_path / "hf", tokenizer, "{{ jinja }}"))
    assert hf.chat_template == "{{ jinja }}"


def test_from_pretrained_dir_needs_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_gguf_fim_end_markers_end_generation() -> None:
    """As in llama.cpp, Qwen2.5-Coder's FIM pad and repository-level separators end
    generation (a base model writes <|file_sep|> after the middle of a repo-level prompt);
    the FIM prompt markers and non-control tokens do not."""
    from seekserve.prompt.tokenizer import _gguf_end_of_generation_ids

    tokens = ["a", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<|endoftext|>", "<|file_sep|>"]  # fmt: skip
    token_types = [1, 3, 3, 3, 3, 3, 3, 3, 1]
    metadata = {"tokenizer.ggml.eos_token_id": 7}
    ids = _gguf_end_of_generation_ids(metadata, {"tokens": tokens, "token_type": token_types})
    assert ids == {4, 5, 6, 7}
