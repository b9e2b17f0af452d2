"""Qwen2.5-Coder-0.5B-Instruct (real GGUF: Q5_0, Q8_0, Q6_K, Q4_K, F32 tensors; qwen2 = llama
with QKV bias): our engine's greedy tokens equal transformers' on the same file in fp32, for
five prompts run together (mixed lengths, chunked prefills beside decodes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seekserve.llm import LLM
from seekserve.sampling_params import SamplingParams
from tests.conftest import hf_greedy

PROMPTS = [
    "def quicksort(arr):",
    "The three laws of thermodynamics are",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\n# a function that normalizes a vector\n",
    "Paris is the capital of",
]
NUM_TOKENS = 32


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    from seekserve.loader.sources import pull

    return pull("qwen2.5-coder-0.5b", progress=False)


def test_greedy_tokens_equal_transformers(qwen_gguf):
    from transformers import AutoModelForCausalLM

    llm = LLM(str(qwen_gguf), dtype="float32", max_num_batched_tokens=16, max_num_seqs=8)
    greedy = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)
    ours = [out.token_ids for out in llm.generate(PROMPTS, greedy)]
    prompt_ids = [llm.tokenizer.encode(prompt) for prompt in PROMPTS]
    engine = llm.engine
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks
    del llm, engine  # free the engine before transformers loads its own copy

    model = AutoModelForCausalLM.from_pretrained(
        qwen_gguf.parent, gguf_file=qwen_gguf.name, dtype=torch.float32
    ).eval()
    expected = [hf_greedy(model, ids, NUM_TOKENS) for ids in prompt_ids]
    assert ours == expected
