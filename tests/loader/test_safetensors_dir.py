"""Hugging Face directories: config.json, single and sharded safetensors, and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from seekserve.engine.engine import Engine
from seekserve.loader.safetensors_dir import (
    load_safetensors_weights,
    read_hf_arch_config,
    weight_files,
)
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config, hf_greedy

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], list(range(20, 45))]


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama of conftest saved in 40 kB shards (about eight)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )
    directory = tmp_path_factory.mktemp("sharded")
    LlamaForCausalLM(config).eval().save_pretrained(directory, max_shard_size="40kB")
    return directory


def greedy_tokens(engine: Engine) -> list[list[int]]:
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, SamplingParams(max_tokens=10, temperature=0.0))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    return [tokens[str(i)] for i in range(len(PROMPTS))]


def test_sharded_checkpoint_is_read_through_its_index(sharded_dir: Path) -> None:
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert sorted(file.name for file in weight_files(sharded_dir)) == shards
    assert sorted(load_safetensors_weights(sharded_dir, torch.float32)) == sorted(
        index["weight_map"]
    )


def test_sharded_checkpoint_gives_the_same_greedy_tokens(sharded_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(sharded_dir, dtype=torch.float32).eval()
    engine = Engine.from_config(engine_config(sharded_dir), eos_token_ids=frozenset())
    assert greedy_tokens(engine) == [hf_greedy(reference, p, 10) for p in PROMPTS]


def test_files_outside_the_index_are_ignored(sharded_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(sharded_dir, tmp_path / "copy"))
    (copy / "stray.safetensors").write_bytes(b"not read")
    assert "stray.safetensors" not in {file.name for file in weight_files(copy)}


def test_missing_shard_is_named(sharded_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(sharded_dir, tmp_path / "copy"))
    last = sorted(copy.glob("model-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(FileNotFoundError, match=f"names shards that are not in .*: {last.name}"):
        weight_files(copy)


def test_directory_without_config_or_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no config.json; is it a Hugging Face model"):
        read_hf_arch_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors file in"):
        weight_files(tmp_path)
