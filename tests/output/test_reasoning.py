"""`<think>` splitting: exact pieces, whatever the delta boundaries."""

from __future__ import annotations

import pytest

from seekserve.output.reasoning import CONTENT, REASONING, ReasoningParser


def split(text: str, step: int, in_reasoning: bool = False) -> tuple[str, str]:
    parser = ReasoningParser(in_reasoning)
    pieces = []
    for start in range(0, len(text), step):
        pieces += parser.feed(text[start : start + step])
    pieces += parser.finish()
    assert all(kind in (REASONING, CONTENT) for kind, _ in pieces)
    kinds = [kind for kind, _ in pieces]
    assert kinds == sorted(kinds, key=lambda k: k == CONTENT), "interleaved runs"
    reasoning = "".join(t for k, t in pieces if k == REASONING)
    return reasoning, "".join(t for k, t in pieces if k == CONTENT)


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_think_block_then_answer(step):
    text = "<think>\nThe user greets. </thin k is not a tag.\n</think>\n\nHello!"
    assert split(text, step) == ("The user greets. </thin k is not a tag.", "Hello!")


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_prompt_opened_the_block(step):
    assert split("Thinking...\n</think>\n\nAnswer.", step, in_reasoning=True) == (
        "Thinking...",
        "Answer.",
    )


@pytest.mark.parametrize("step", [1, 1000])
def test_no_think_block_is_all_answer(step):
    assert split("Just an answer <think> later", step) == ("", "Just an answer <think> later")


@pytest.mark.parametrize("step", [1, 1000])
def test_cut_inside_reasoning(step):
    assert split("<think>\nstill thinking\n", step) == ("still thinking", "")


def test_in_reasoning_state():
    parser = ReasoningParser(False)
    assert not parser.in_reasoning
    parser.feed("<thi")
    assert not parser.in_reasoning
    parser.feed("nk>a")
    assert parser.in_reasoning
    parser.feed("</think>b")
    assert not parser.in_reasoning
