"""Qwen3 on our engine equals transformers' Qwen3ForCausalLM (tiny random weights, fp32):
logits of prompts batched together, and greedy tokens with staggered, chunked prefills."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekserve.loader.model_loader import read_arch_config
from seekserve.models.registry import supported_architectures
from tests.conftest import hf_greedy
from tests.models.engine_drivers import (
    batched_step_logits,
    hf_step_logits,
    make_engine,
    staggered_greedy,
)

NUM_TOKENS = 32
_generator = torch.Generator().manual_seed(7)
# mixed lengths; token 0..255 of the tiny vocabulary
PROMPTS = [torch.randint(0, 256, (n,), generator=_generator).tolist() for n in (3, 11, 26, 37, 1)]


def build_tiny_qwen3(directory: Path, seed: int = 0, **overrides: object) -> Path:
    """A random-weight Qwen3 with head_dim (32) != hidden_size / num_heads (16)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "initializer_range": 0.3,
    }
    fields.update(overrides)
    model = Qwen3ForCausalLM(Qwen3Config(**fields)).eval()
    # the norms start at 1: perturb them so a missing or misplaced q/k norm shows
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def hf_model(qwen3_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(qwen3_dir, dtype=torch.float32).eval()


def test_config_is_read_as_qwen3(qwen3_dir):
    cfg = read_arch_config(qwen3_dir)
    assert "qwen3" in supported_architectures()
    assert (cfg.architecture, cfg.head_dim, cfg.attention_bias) == ("qwen3", 32, False)
    assert cfg.layer_types == () and cfg.sliding_window is None


@pytest.mark.parametrize("max_num_batched_tokens", [256, 16])
def test_batched_logits_equal_transformers(qwen3_dir, hf_model, max_num_batched_tokens):
    engine = make_engine(qwen3_dir, max_num_batched_tokens=max_num_batched_tokens)
    for prompt, ours in zip(PROMPTS, batched_step_logits(engine, PROMPTS, 4), strict=True):
        expected = hf_step_logits(hf_model, prompt, ours)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_staggered_greedy_tokens_equal_transformers(qwen3_dir, hf_model):
    expected = [hf_greedy(hf_model, prompt, NUM_TOKENS) for prompt in PROMPTS]
    engine = make_engine(qwen3_dir, max_num_batched_tokens=16, num_blocks=128)
    assert staggered_greedy(engine, PROMPTS, NUM_TOKENS, num_early=2) == expected


def test_sliding_window_layers_equal_transformers(tmp_path):
    # Qwen3's optional sliding window: layers from max_window_layers on see 5 positions
    model_dir = build_tiny_qwen3(
        tmp_path, use_sliding_window=True, sliding_window=5, max_window_layers=1
    )
    assert read_arch_config(model_dir).layer_types == (
        "full_attention",
        "sliding_attention",
        "sliding_attention",
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = make_engine(model_dir, max_num_batched_tokens=16)
    for prompt, ours in zip(PROMPTS, batched_step_logits(engine, PROMPTS, 4), strict=True):
        torch.testing.assert_close(ours, hf_step_logits(hf, prompt, ours), rtol=1e-4, atol=1e-4)


def test_unknown_rope_scaling_is_rejected(tmp_path):
    model_dir = build_tiny_qwen3(
        tmp_path,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    with pytest.raises(ValueError, match="rope scaling 'yarn' is not supported"):
        make_engine(model_dir)
