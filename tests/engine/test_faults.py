"""A fault in one request fails that request alone; a failed model step fails the requests
of that step and the engine serves on."""

from __future__ import annotations

from pathlib import Path

from seekserve.engine.engine import Engine
from seekserve.sampling.constraints import GrammarConstraint
from seekserve.sampling_params import SamplingParams
from tests.conftest import engine_config

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


class _BrokenMatcher:
    """An xgrammar matcher stand-in that breaks on its second mask."""

    def __init__(self) -> None:
        self.calls = 0

    def fill_next_token_bitmask(self, bitmask, row) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")

    def accept_token(self, token_id: int) -> bool:
        return True

    def is_completed(self) -> bool:
        return False

    def is_terminated(self) -> bool:
        return False


def _run(engine: Engine) -> tuple[dict[str, list[int]], dict[str, tuple[str, str | None]]]:
    tokens: dict[str, list[int]] = {}
    ends: dict[str, tuple[str, str | None]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.finish_reason is not None:
                ends[output.request_id] = (output.finish_reason, output.error)
    return tokens, ends


def test_a_broken_grammar_fails_only_its_request(tiny_llama_dir: Path):
    engine = Engine.from_config(engine_config(tiny_llama_dir), eos_token_ids=frozenset())
    engine.add_request("alone", [5, 6, 7], GREEDY)
    solo, _ = _run(engine)

    engine.add_request("good", [5, 6, 7], GREEDY)
    engine.add_request("bad", [9, 10], GREEDY)
    engine.scheduler.requests["bad"].constraint = GrammarConstraint(_BrokenMatcher())
    tokens, ends = _run(engine)
    assert ends["bad"] == ("abort", "grammar failed: boom")
    assert len(tokens["bad"]) == 2  # the token sampled with the failed (open) mask ends it
    assert ends["good"] == ("length", None)
    assert tokens["good"] == solo["alone"]
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(tiny_llama_dir: Path):
    engine = Engine.from_config(engine_config(tiny_llama_dir), eos_token_ids=frozenset())
    engine.add_request("reference", [1, 2, 3], GREEDY)
    reference, _ = _run(engine)

    execute = engine.runner.execute
    calls = {"n": 0}

    def failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fault")
        return execute(*args, **kwargs)

    engine.runner.execute = failing_once
    engine.add_request("a", [1, 2, 3], GREEDY)
    engine.add_request("b", [4, 5], GREEDY)
    tokens, ends = _run(engine)
    assert ends == {
        "a": ("abort", "internal error in the engine step"),
        "b": ("abort", "internal error in the engine step"),
    }
    engine.add_request("after", [1, 2, 3], GREEDY)
    tokens, ends = _run(engine)
    assert (tokens["after"], ends["after"]) == (reference["reference"], ("length", None))
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_total_blocks
