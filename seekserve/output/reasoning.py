"""Splitting a thinking model's output into reasoning and answer: `<think>…</think>`.

R1-style models write `<think>\\n…\\n</think>\\n\\n` and then the answer; templates that open
the block themselves (the generation prompt ends in `<think>`) make the output start inside
it. The tags and the whitespace around them are dropped; a tag split across deltas is held
back until it is known. Output with no opening tag, from a prompt that did not open one, is
all answer.
"""

from __future__ import annotations

from seekserve.output.markup import safe_len

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

REASONING, CONTENT = "reasoning", "content"


class ReasoningParser:
    def __init__(self, in_reasoning: bool) -> None:
        """`in_reasoning`: the prompt opened the think block."""
        self._state = "reasoning" if in_reasoning else "start"
        self._buffer = ""
        self._at_run_start = True  # leading whitespace of a run is dropped

    @property
    def in_reasoning(self) -> bool:
        """Inside the think block (not before it is known whether there is one)."""
        return self._state == "reasoning"

    def feed(self, text: str) -> list[tuple[str, str]]:
        """(REASONING | CONTENT, text) pieces, in order."""
        self._buffer += text
        pieces: list[tuple[str, str]] = []
        if self._state == "start":
            stripped = self._buffer.lstrip()
            if THINK_OPEN.startswith(stripped):
                return pieces  # nothing yet, or part of the opening tag
            if stripped.startswith(THINK_OPEN):
                self._buffer = stripped[len(THINK_OPEN) :]
                self._state = "reasoning"
            else:
                self._state = "content"
        if self._state == "reasoning":
            index = self._buffer.find(THINK_CLOSE)
            if index < 0:
                end = safe_len(self._buffer, (THINK_CLOSE,))
                self._emit(pieces, REASONING, self._buffer[:end])
                self._buffer = self._buffer[end:]
                return pieces
            self._emit(pieces, REASONING, self._buffer[:index].rstrip())
            self._buffer = self._buffer[index + len(THINK_CLOSE) :]
            self._state, self._at_run_start = "content", True
        self._emit(pieces, CONTENT, self._buffer)
        self._buffer = ""
        return pieces

    def finish(self) -> list[tuple[str, str]]:
        pieces: list[tuple[str, str]] = []
        kind = REASONING if self._state == "reasoning" else CONTENT
        text = self._buffer.rstrip() if kind == REASONING else self._buffer
        self._emit(pieces, kind, text)
        self._buffer = ""
        return pieces

    def _emit(self, pieces: list[tuple[str, str]], kind: str, text: str) -> None:
        if self._at_run_start:
            text = text.lstrip()
            if not text:
                return
            self._at_run_start = False
        if text:
            pieces.append((kind, text))
