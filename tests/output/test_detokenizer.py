"""Incremental detokenization on SmolLM2's byte-level BPE: never a broken character."""

import random
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


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_stream_emits_what_the_windowed_decode_emits(tokenizer, skip_special_tokens):
    """The fast path (tokenizers' DecodeStream) against the Python window algorithm, token by
    token and several at a time, on random ids: byte pieces of characters, special tokens,
    words, and ids from anywhere in the vocabulary."""
    rng = random.Random(7)
    vocab = tokenizer.backend.get_vocab_size()
    text_ids = tokenizer.encode("naïve café — 東京 🙂👍🏽 <|im_end|> done " * 4)
    for trial in range(200):
        if trial % 3 == 0:
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        elif trial % 3 == 1:
            ids = [i if rng.random() > 0.2 else rng.randrange(vocab) for i in text_ids]
        else:
            ids = [rng.randrange(300) for _ in range(rng.randint(1, 40))]  # bytes, specials
        fast = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        slow = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        assert fast._backend is not None  # the fast path is the one under test
        if trial % 2:  # token by token: the same text at every step
            for token_id in ids:
                assert fast.add([token_id]) == slow.add_windowed([token_id]), ids
            continue
        # several at a time: DecodeStream goes token by token, so it may emit a complete
        # character that the windowed decode holds back with an incomplete one after it in
        # the same call; never less text, and in all what the windowed decode gives fed
        # token by token
        one_by_one = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        fast_text = slow_text = ""
        start = 0
        while start < len(ids):
            piece = ids[start : start + rng.randint(1, 3)]
            start += len(piece)
            fast_text += fast.add(piece)
            slow_text += slow.add_windowed(piece)
            assert fast_text.startswith(slow_text), ids
        assert fast_text == "".join(one_by_one.add_windowed([i]) for i in ids), ids


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
