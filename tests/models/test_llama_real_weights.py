"""SmolLM2-135M-Instruct (real GGUF): our engine's greedy tokens equal transformers' on the
same file in fp32, alone and when the prompts run concurrently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekserve.llm import LLM
from seekserve.sampling_params import SamplingParams
from tests.conftest import hf_greedy

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is the largest planet in the solar system?<|im_end|>\n"
    "<|im_start|>assistant\n",
]
NUM_TOKENS = 32


@pytest.fixture(scope="module")
def hf_reference(smollm2_gguf: Path) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    from seekserve.prompt.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(smollm2_gguf)
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    return [hf_greedy(model, tokenizer.encode(prompt), NUM_TOKENS) for prompt in PROMPTS]


@pytest.fixture(scope="module")
def llm(smollm2_gguf: Path) -> LLM:
    # a small step budget so the longer prompts are prefilled in several chunks
    return LLM(str(smollm2_gguf), dtype="float32", max_num_batched_tokens=16, max_num_seqs=8)


GREEDY = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)


def test_greedy_tokens_equal_transformers_one_at_a_time(llm, hf_reference):
    for prompt, expected in zip(PROMPTS, hf_reference, strict=True):
        [out] = llm.generate([prompt], GREEDY)
        assert out.token_ids == expected, prompt


def test_concurrent_requests_give_the_tokens_they_give_alone(llm, hf_reference):
    # all prompts together: mixed lengths, chunked prefills beside decodes
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == hf_reference
    # staggered joins: half start, then the rest join mid-decode
    engine = llm.engine
    for index, prompt in enumerate(PROMPTS[:3]):
        engine.add_request(f"early-{index}", llm.tokenizer.encode(prompt), GREEDY)
    tokens: dict[str, list[int]] = {}
    for _ in range(5):
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    for index, prompt in enumerate(PROMPTS[3:], start=3):
        engine.add_request(f"late-{index}", llm.tokenizer.encode(prompt), GREEDY)
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    got = [tokens[f"early-{i}"] for i in range(3)] + [
        tokens[f"late-{i}"] for i in range(3, len(PROMPTS))
    ]
    assert got == hf_reference
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks
