"""Scanning streamed text for markup (tags such as `<think>` or `<tool_call>`) that may
arrive split across deltas: what could still become a marker is held back, never emitted.

    emitted ...... | held: "\n<tool_ca" | ← the next delta decides: a marker, or plain text
"""

from __future__ import annotations


def partial_marker_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(text), len(marker) - 1), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


def safe_len(text: str, markers: tuple[str, ...], hold_whitespace: bool = True) -> int:
    """How much of `text` can be emitted now: all but a partial marker at its end and (with
    `hold_whitespace`) the whitespace before it, which is dropped if a marker follows."""
    end = len(text) - partial_marker_len(text, markers)
    if hold_whitespace:
        while end > 0 and text[end - 1].isspace():
            end -= 1
    return end


def find_first(text: str, markers: tuple[str, ...]) -> tuple[int, str | None]:
    """The earliest position of any marker in `text` and that marker, or (-1, None)."""
    best, found = -1, None
    for marker in markers:
        index = text.find(marker)
        if index >= 0 and (best < 0 or index < best):
            best, found = index, marker
    return best, found
