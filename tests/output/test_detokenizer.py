"""Incremental detokenization on SmolLM2's byte-level BPE: never a broken character."""

from pathlib import Path

import pytest

from seekserve.engine.outputs import EngineOutput
from seekserve.output.detokenizer import IncrementalDetokenizer
from seekserve.output.processor import RequestOutputState


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path):
    from seekserve.prompt.tokenizer import Tokenizer

    return Tokenizer.from_gguf(smollm2_gguf)


TEXTS = ["Hello, world!", "naïve café — 東京 🙂👍🏽 done", "  leading spaces\n\ttabs", "数字123"]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_rebuild_the_text(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add([token_id]) for token_id in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_partial_character_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1  # the emoji spans several byte-level tokens
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "🙂"


def test_output_state_stops_on_a_string_spanning_tokens(tokenizer):
    ids = tokenizer.encode("The answer is 42. Done")
    state = RequestOutputState(tokenizer, stops=("42.",))
    text, finish, num_fed = "", None, 0
    for token_id in ids:
        num_fed += 1
        delta = state.process(EngineOutput("r", [token_id], None, 3))
        text += delta.text
        if delta.finish_reason:
            finish = delta.finish_reason
            break
    assert (text, finish) == ("The answer is ", "stop")
    assert delta.num_output_tokens == num_fed


def test_special_tokens_are_not_emitted(tokenizer):
    eos = tokenizer.encode("<|im_end|>")
    state = RequestOutputState(tokenizer, stops=())
    first = state.process(EngineOutput("r", tokenizer.encode("Hi"), None, 3))
    last = state.process(EngineOutput("r", eos, "stop", 3))
    assert (first.text, last.text, last.finish_reason, last.num_output_tokens) == (
        "Hi",
        "",
        "stop",
        2,
    )
