"""The engine on a tiny random Llama, against a plain transformers greedy loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekserve.engine.engine import Engine
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config, hf_greedy

PROMPTS = [
    [1, 2, 3, 4, 5, 6, 7],
    [9, 8, 7],
    list(range(20, 45)),
    [5],
    list(range(100, 137)),
]
NUM_TOKENS = 12
GREEDY = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0)


@pytest.fixture(scope="module")
def hf_model(tiny_llama_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(hf_model) -> list[list[int]]:
    return [hf_greedy(hf_model, prompt, NUM_TOKENS) for prompt in PROMPTS]


def make_engine(model_dir: Path, **kwargs) -> Engine:
    return Engine.from_config(engine_config(model_dir, **kwargs), eos_token_ids=frozenset())


def run_to_completion(engine: Engine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    return tokens


def assert_pool_full(engine: Engine) -> None:
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks


def test_each_prompt_alone_matches_transformers(tiny_llama_dir, reference):
    engine = make_engine(tiny_llama_dir)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, GREEDY)
        assert run_to_completion(engine)[str(index)] == reference[index]
        assert_pool_full(engine)


def test_concurrent_and_staggered_requests_give_the_same_tokens(tiny_llama_dir, reference):
    engine = make_engine(tiny_llama_dir, max_num_batched_tokens=16)
    for index in (0, 2):
        engine.add_request(str(index), PROMPTS[index], GREEDY)
    tokens: dict[str, list[int]] = {}
    for _ in range(4):  # the first two are mid-prefill or decoding when the rest join
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    for index in (1, 3, 4):
        engine.add_request(str(index), PROMPTS[index], GREEDY)
    for rid, new in run_to_completion(engine).items():
        tokens.setdefault(rid, []).extend(new)
    assert [tokens[str(i)] for i in range(len(PROMPTS))] == reference
    assert_pool_full(engine)


def test_preempted_requests_resume_with_the_same_tokens(tiny_llama_dir, reference):
    # 14 blocks of 4 tokens: not enough for all five requests to grow at once
    engine = make_engine(tiny_llama_dir, num_blocks=14, max_num_batched_tokens=64)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, GREEDY)
    preempted: set[str] = set()
    tokens: dict[str, list[int]] = {}
    original_schedule = engine.scheduler.schedule

    def schedule_and_record():
        out = original_schedule()
        preempted.update(out.preempted_request_ids)
        return out

    engine.scheduler.schedule = schedule_and_record
    for rid, new in run_to_completion(engine).items():
        tokens.setdefault(rid, []).extend(new)
    assert preempted, "the pool was meant to force a preemption"
    assert [tokens[str(i)] for i in range(len(PROMPTS))] == reference
    assert_pool_full(engine)


def _prefill_logits(engine: Engine, prompt: list[int]) -> torch.Tensor:
    """Drive schedule → compute_logits → update by hand; the logits of the sampling step."""
    engine.add_request("p", prompt, SamplingParams(max_tokens=1, temperature=0.0))
    num_chunks = 0
    while True:
        out = engine.scheduler.schedule()
        num_chunks += 1
        request_ids, logits = engine.runner.compute_logits(out)
        if request_ids == ["p"]:
            engine.scheduler.update(out, {"p": int(logits[0].argmax())})
            engine.last_num_chunks = num_chunks
            return logits[0]
        engine.scheduler.update(out, {})


def test_chunked_prefill_gives_the_logits_of_one_shot_prefill(tiny_llama_dir, hf_model):
    prompt = PROMPTS[4]  # 37 tokens
    one_shot = make_engine(tiny_llama_dir, max_num_batched_tokens=64)
    chunked = make_engine(tiny_llama_dir, max_num_batched_tokens=8)
    logits_one = _prefill_logits(one_shot, prompt)
    logits_chunked = _prefill_logits(chunked, prompt)
    assert one_shot.last_num_chunks == 1 and chunked.last_num_chunks == 5
    # fp32 either way, but the chunks attend through masked SDPA over gathered K/V and the
    # one shot through causal SDPA: sums in another order (up to 2e-5 apart on an AMD EPYC)
    torch.testing.assert_close(logits_chunked, logits_one, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        expected = hf_model(torch.tensor([prompt])).logits[0, -1]
    torch.testing.assert_close(logits_one, expected, rtol=1e-4, atol=1e-4)


def test_block_pool_is_full_again_after_abort_mid_generation(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, SamplingParams(max_tokens=50, temperature=0.0))
    for _ in range(6):
        engine.step()
    assert engine.kv_cache.num_free_blocks < engine.kv_cache.num_total_blocks
    for index in range(len(PROMPTS)):
        output = engine.abort_request(str(index))
        assert output is not None and output.finish_reason == "abort"
    assert not engine.has_unfinished_requests()
    assert_pool_full(engine)
    assert engine.step() == []


def test_finish_reasons_length_and_eos(tiny_llama_dir, reference):
    engine = Engine.from_config(
        engine_config(tiny_llama_dir), eos_token_ids=frozenset({reference[0][3]})
    )
    engine.add_request("eos", PROMPTS[0], SamplingParams(max_tokens=20, temperature=0.0))
    engine.add_request("len", PROMPTS[1], SamplingParams(max_tokens=2, temperature=0.0))
    finish = {}
    tokens = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finish_reason:
                finish[out.request_id] = out.finish_reason
    # the EOS id first appears at index 3 of prompt 0's greedy output (or earlier)
    first_eos = reference[0].index(reference[0][3])
    assert finish == {"eos": "stop", "len": "length"}
    assert tokens["eos"] == reference[0][: first_eos + 1]
    assert tokens["len"] == reference[1][:2]


def test_seeded_sampling_is_reproducible(tiny_llama_dir):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9)
    runs = []
    for _ in range(2):
        engine = make_engine(tiny_llama_dir)
        engine.add_request("s", PROMPTS[2], params)
        runs.append(run_to_completion(engine)["s"])
    assert runs[0] == runs[1]


# -- prefix cache ------------------------------------------------------------------------


def generate_one(engine: Engine, request_id: str, prompt: list[int], **kw) -> tuple[list, int]:
    engine.add_request(request_id, prompt, GREEDY, **kw)
    tokens, num_cached = [], None
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.extend(output.new_token_ids)
            num_cached = output.num_cached_tokens
    return tokens, num_cached


SHARED = list(range(30, 60))  # 30 tokens: 7 full blocks of 4


def test_prefix_hits_give_the_tokens_of_a_cold_run(tiny_llama_dir):
    off = make_engine(tiny_llama_dir, enable_prefix_caching=False)
    on = make_engine(tiny_llama_dir)
    prompts = [SHARED + [1, 2, 3], SHARED + [9], SHARED[:17] + [5, 6], SHARED + [1, 2, 3]]
    cached = []
    for index, prompt in enumerate(prompts):
        expected, cold_cached = generate_one(off, f"off{index}", prompt)
        got, num_cached = generate_one(on, f"on{index}", prompt)
        assert got == expected and cold_cached == 0
        cached.append(num_cached)
    # 1st: cold; 2nd: 28 of SHARED's 30 tokens (7 blocks); 3rd: 16 (block 5 differs);
    # 4th: all but the last token's block of 33 tokens, 8 blocks = 32
    assert cached == [0, 28, 16, 32]
    assert_pool_full(on)


def test_concurrent_requests_sharing_a_prefix_and_preemption_with_the_cache(
    tiny_llama_dir, reference
):
    engine = make_engine(tiny_llama_dir, num_blocks=14, max_num_batched_tokens=64)
    for index, prompt in enumerate(PROMPTS):
        engine.add_request(str(index), prompt, GREEDY)
        engine.add_request(f"again-{index}", prompt, GREEDY)  # same prompt, same step
    tokens = run_to_completion(engine)
    for index in range(len(PROMPTS)):
        assert tokens[str(index)] == reference[index]
        assert tokens[f"again-{index}"] == reference[index]
    assert engine.scheduler.stats.num_preemptions > 0
    assert engine.scheduler.stats.num_cached_prompt_tokens > 0
    assert_pool_full(engine)


@pytest.mark.parametrize(
    ("shared_len", "expected_cached"),
    [(63, 48), (64, 64), (65, 64), (130, 128), (1000, 992)],
)
def test_cached_tokens_are_the_full_blocks_of_the_shared_prefix(
    tiny_llama_long_dir, shared_len, expected_cached
):
    from seekserve.usage import usage_dict

    engine = make_engine(
        tiny_llama_long_dir, block_size=16, num_blocks=160, max_num_batched_tokens=512
    )
    shared = [(7 * i) % 250 + 3 for i in range(shared_len)]
    generate_one(engine, "first", shared + [1, 1, 1])
    engine_params = SamplingParams(max_tokens=1, temperature=0.0)
    engine.add_request("second", shared + [2, 2], engine_params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step())
    assert outputs[-1].num_cached_tokens == expected_cached
    usage = usage_dict(shared_len + 2, 1, outputs[-1].num_cached_tokens)
    hit = {63: 0, 64: 64, 65: 64, 130: 128, 1000: 960}[shared_len]
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (
        hit,
        shared_len + 2 - hit,
    )
    assert usage["prompt_tokens_details"]["cached_tokens"] == hit
