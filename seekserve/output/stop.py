"""Stop strings matched on decoded text, across token boundaries, excluded from the output.

Text that could be the start of a stop string is held back until it is known not to be one:

    emitted ............ | held: "</s" | ← next delta "top>" completes "</stop>": stop here
"""

from __future__ import annotations


class StopChecker:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._max_hold = max((len(s) for s in self.stops), default=1) - 1
        self._held = ""
        self.matched: str | None = None
        """The stop string that ended the output (the earliest in the text), once found."""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit, True if a stop string was found)."""
        if not self.stops:
            return delta, False
        text = self._held + delta
        hits = [(i, s) for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            self._held = ""
            index, self.matched = min(hits, key=lambda hit: hit[0])
            return text[:index], True
        hold = self._holdable_suffix(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """Text still held back when generation ended for another reason."""
        held, self._held = self._held, ""
        return held

    def _holdable_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that begins a stop string: the leftmost
        position that could start one and does is the longest."""
        longest = 0
        for stop in self.stops:
            start = max(0, len(text) - len(stop) + 1, len(text) - self._max_hold)
            index = text.find(stop[0], start)
            while index != -1 and len(text) - index > longest:
                if stop.startswith(text[index:]):
                    longest = len(text) - index
                    break
                index = text.find(stop[0], index + 1)
        return longest
