"""Drivers for comparing an architecture on our engine with transformers: every sampling
step's logits of prompts batched together, and greedy tokens with staggered arrivals."""

from __future__ import annotations

from pathlib import Path

import torch

from seekserve.engine.engine import Engine
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config


def make_engine(model_dir: Path, **kwargs: object) -> Engine:
    return Engine.from_config(engine_config(model_dir, **kwargs), eos_token_ids=frozenset())


def batched_step_logits(
    engine: Engine, prompts: list[list[int]], num_tokens: int
) -> list[torch.Tensor]:
    """All prompts submitted at once and run greedily by schedule → compute_logits → update;
    per prompt, the logits of each of its `num_tokens` sampling steps: (num_tokens, vocab)."""
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        engine.add_request(str(index), prompt, params)
    rows: dict[str, list[torch.Tensor]] = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        out = engine.scheduler.schedule()
        request_ids, logits = engine.runner.compute_logits(out)
        for request_id, row in zip(request_ids, logits, strict=True):
            rows[request_id].append(row.clone())
        sampled = {rid: int(row.argmax()) for rid, row in zip(request_ids, logits, strict=True)}
        engine.scheduler.update(out, sampled)
    return [torch.stack(rows[str(i)]) for i in range(len(prompts))]


def hf_step_logits(
    model: torch.nn.Module, prompt: list[int], step_logits: torch.Tensor
) -> torch.Tensor:
    """transformers' logits at the positions our engine sampled from, over the sequence our
    engine generated greedily (prompt + argmax of each step but the last)."""
    generated = step_logits[:-1].argmax(dim=-1).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0]
    return logits[len(prompt) - 1 :].float()


def staggered_greedy(
    engine: Engine, prompts: list[list[int]], num_tokens: int, num_early: int
) -> list[list[int]]:
    """Greedy tokens when the first `num_early` prompts start, run 5 steps, and the rest join
    mid-decode (chunked prefills beside decodes when the step budget is small)."""
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    tokens: dict[str, list[int]] = {}

    def step() -> None:
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)

    for index, prompt in enumerate(prompts[:num_early]):
        engine.add_request(str(index), prompt, params)
    for _ in range(5):
        step()
    for index, prompt in enumerate(prompts[num_early:], start=num_early):
        engine.add_request(str(index), prompt, params)
    while engine.has_unfinished_requests():
        step()
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks
    return [tokens[str(i)] for i in range(len(prompts))]
