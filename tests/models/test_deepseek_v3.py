"""DeepSeek V3 / V2 (multi-head latent attention over a latent cache, MoE, YaRN) against
transformers on tiny random models, through the real engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekserve.engine.engine import Engine
from seekserve.models.config import ModelArchConfig
from seekserve.models.layers.moe import SparseMoE
from seekserve.runner.model_runner import kv_bytes_per_block
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config, hf_greedy

PROMPTS = [
    [1, 2, 3, 4, 5, 6, 7],
    [9, 8, 7],
    list(range(20, 61)),  # 41 tokens: past YaRN's original context of 32
    [5],
    list(range(100, 137)),
]
NUM_TOKENS = 32
# YaRN: a 4x longer context (128) than the original one (32)
YARN_CONTEXT = {"max_position_embeddings": 128}
YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
# variant name -> (model_type, config overrides)
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "v3": ("deepseek_v3", {}),
    "v3-yarn": ("deepseek_v3", {"rope_scaling": YARN, **YARN_CONTEXT}),
    "v3-no-q-lora": ("deepseek_v3", {"q_lora_rank": None}),
    "v2-group-limited": (
        "deepseek_v2",
        {"topk_method": "group_limited_greedy", "rope_scaling": YARN, **YARN_CONTEXT},
    ),
    "v2-greedy": ("deepseek_v2", {"topk_method": "greedy", "q_lora_rank": None}),
}


def build_tiny_deepseek(
    directory: Path, model_type: str = "deepseek_v3", seed: int = 0, **overrides: object
) -> Path:
    """A random-weight DeepSeek V3 (or V2) saved as a Hugging Face directory: 3 layers (the
    first dense), 8 routed experts in 2 groups, 2 per token, one shared expert."""
    from transformers import (
        DeepseekV2Config,
        DeepseekV2ForCausalLM,
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
    )

    torch.manual_seed(seed)
    fields: dict[str, object] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 2,
        "topk_group": 1,
        "n_shared_experts": 1,
        "routed_scaling_factor": 2.5,
        "max_position_embeddings": 512,
        "initializer_range": 0.3,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    fields.update(overrides)
    if model_type == "deepseek_v3":
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**fields)).eval()
        # a non-zero correction bias, so that choosing by (score + bias) is exercised
        for layer in model.model.layers[fields["first_k_dense_replace"] :]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
    else:
        model = DeepseekV2ForCausalLM(DeepseekV2Config(**fields)).eval()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model dir, transformers model loaded from it) for each variant."""
    from transformers import AutoModelForCausalLM

    model_type, overrides = VARIANTS[request.param]
    directory = build_tiny_deepseek(tmp_path_factory.mktemp(request.param), model_type, **overrides)
    hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return directory, hf_model


def make_engine(model_dir: Path, **kwargs: object) -> Engine:
    return Engine.from_config(engine_config(model_dir, **kwargs), eos_token_ids=frozenset())


def test_logits_of_a_mixed_batch_match_transformers(variant):
    model_dir, hf_model = variant
    engine = make_engine(model_dir, max_num_batched_tokens=256)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, params)
    request_ids, logits = engine.runner.compute_logits(engine.scheduler.schedule())
    assert sorted(request_ids) == [str(i) for i in range(len(PROMPTS))]  # one step, all
    with torch.no_grad():
        for row, request_id in enumerate(request_ids):
            expected = hf_model(torch.tensor([PROMPTS[int(request_id)]])).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)


def test_staggered_chunked_greedy_tokens_match_transformers(variant):
    model_dir, hf_model = variant
    reference = [hf_greedy(hf_model, prompt, NUM_TOKENS) for prompt in PROMPTS]
    engine = make_engine(model_dir, max_num_batched_tokens=16)  # long prompts in chunks
    greedy = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0)
    tokens: dict[str, list[int]] = {}

    def step() -> None:
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)

    for index in (0, 2):
        engine.add_request(str(index), PROMPTS[index], greedy)
    for _ in range(4):  # the first two are mid-prefill or decoding when the rest join
        step()
    for index in (1, 3, 4):
        engine.add_request(str(index), PROMPTS[index], greedy)
    while engine.has_unfinished_requests():
        step()
    assert [tokens[str(i)] for i in range(len(PROMPTS))] == reference
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks


def test_router_sends_the_tokens_of_a_prompt_to_several_experts(variant):
    model_dir, _ = variant
    engine = make_engine(model_dir)
    moe = engine.runner.model.model.layers[1].mlp
    assert isinstance(moe, SparseMoE)
    hidden = engine.runner.model.model.embed_tokens(torch.tensor(PROMPTS[2]))
    weights, expert_ids = moe.gate(hidden)
    assert expert_ids.shape == (len(PROMPTS[2]), 2)
    assert (expert_ids[:, 0] != expert_ids[:, 1]).all()  # two distinct experts per token
    assert len(expert_ids.unique()) > 2  # and the prompt's tokens spread over more
    assert (weights > 0).all()


@pytest.mark.parametrize(
    "params",
    [
        YARN,
        {**YARN, "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2},
        {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 16},
        {**YARN, "attention_factor": 0.5, "truncate": False},
    ],
)
def test_yarn_frequencies_and_attention_factor_match_transformers(params):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from seekserve.models.layers.yarn import yarn_inv_freq

    config = DeepseekV3Config(qk_rope_head_dim=8, max_position_embeddings=128)
    config.rope_parameters = {**params, "rope_theta": 10000.0}
    expected_inv_freq, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    inv_freq, factor = yarn_inv_freq(8, 10000.0, config.rope_parameters, 128)
    torch.testing.assert_close(inv_freq, expected_inv_freq, rtol=0, atol=0)
    assert factor == pytest.approx(expected_factor, rel=1e-12)


def test_kv_cache_holds_the_latent_and_the_rope_key_per_token_and_layer(tmp_path):
    model_dir = build_tiny_deepseek(tmp_path)
    engine = make_engine(model_dir, num_blocks=16, block_size=4)
    # 3 layers × (kv_lora_rank 16 + qk_rope_head_dim 8), fp32: 288 bytes a token
    assert engine.runner.kv_cache.shape == (3, 1, 16, 4, 1, 16 + 8)
    assert engine.kv_bytes_per_block == 3 * 4 * (16 + 8) * 4
    arch = engine.arch
    assert kv_bytes_per_block(arch, 1, torch.bfloat16) == 3 * (16 + 8) * 2
    # expanded K/V would be 4 heads × (24 + 16) per layer: 6.7x more
    expanded = arch.num_attention_heads * (16 + 8 + 16)
    assert expanded / (16 + 8) > 6


def test_llama_kv_cache_keeps_k_and_v_per_kv_head(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, num_blocks=16, block_size=4)
    arch: ModelArchConfig = engine.arch
    assert engine.runner.kv_cache.shape == (2, 2, 16, 4, 2, 16)  # layers, K/V, …, Hkv, D
    assert engine.kv_bytes_per_block == 2 * 2 * 4 * arch.num_key_value_heads * 16 * 4


def test_disk_tier_restores_latent_blocks_after_a_restart(tmp_path):
    model_dir = build_tiny_deepseek(tmp_path / "model")
    prompt = list(range(30, 75)) + [1, 2]  # 47 tokens: 11 full blocks of 4
    greedy = SamplingParams(max_tokens=8, temperature=0.0)

    def run(engine: Engine) -> tuple[list[int], int]:
        engine.add_request("r", prompt, greedy)
        tokens, cached = [], 0
        while engine.has_unfinished_requests():
            for output in engine.step():
                tokens.extend(output.new_token_ids)
                cached = output.num_cached_tokens
        engine.close()
        return tokens, cached

    expected, _ = run(make_engine(model_dir, enable_prefix_caching=False))
    assert run(make_engine(model_dir, disk_cache_dir=tmp_path / "kv")) == (expected, 0)
    second = make_engine(model_dir, disk_cache_dir=tmp_path / "kv")
    assert run(second) == (expected, 44)
    assert second.scheduler.stats.num_disk_prompt_tokens == 44
