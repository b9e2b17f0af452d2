"""One assistant message out of generated text: reasoning, content and tool calls.

    text deltas ─► ReasoningParser (thinking models) ─► reasoning pieces
                                                    └► answer ─► ToolCallParser (tools on)
                                                                 ├► content
                                                                 └► tool-call start / arguments

`MessageParser` yields the events in output order (the stream sends them as they come);
`MessageBuilder` folds them into the final message (the JSON response).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from seekserve.output.reasoning import REASONING, ReasoningParser
from seekserve.output.tool_calls import ToolCallArgs, ToolCallParser, ToolCallStart


@dataclass(frozen=True, slots=True)
class ReasoningText:
    text: str


@dataclass(frozen=True, slots=True)
class ContentText:
    text: str


MessageEvent = ReasoningText | ContentText | ToolCallStart | ToolCallArgs


class MessageParser:
    def __init__(
        self, reasoning: ReasoningParser | None = None, tools: ToolCallParser | None = None
    ) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self.num_reasoning_tokens = 0

    @property
    def num_tool_calls(self) -> int:
        return self._tools.num_calls if self._tools is not None else 0

    def feed(self, text: str, num_new_tokens: int = 0) -> list[MessageEvent]:
        """The events of a delta; its `num_new_tokens` count as reasoning tokens when the
        delta began or ended inside the think block."""
        if self._reasoning is None:
            return self._answer(text)
        was_reasoning = self._reasoning.in_reasoning
        events = self._route(self._reasoning.feed(text))
        if was_reasoning or self._reasoning.in_reasoning:
            self.num_reasoning_tokens += num_new_tokens
        return events

    def finish(self) -> list[MessageEvent]:
        events = self._route(self._reasoning.finish()) if self._reasoning is not None else []
        if self._tools is not None:
            events.extend(self._wrap(self._tools.finish()))
        return events

    def _route(self, pieces: list[tuple[str, str]]) -> list[MessageEvent]:
        events: list[MessageEvent] = []
        for kind, text in pieces:
            if kind == REASONING:
                events.append(ReasoningText(text))
            else:
                events.extend(self._answer(text))
        return events

    def _answer(self, text: str) -> list[MessageEvent]:
        if self._tools is None:
            return [ContentText(text)] if text else []
        return self._wrap(self._tools.feed(text))

    @staticmethod
    def _wrap(events: list[str | ToolCallStart | ToolCallArgs]) -> list[MessageEvent]:
        return [ContentText(e) if isinstance(e, str) else e for e in events]


@dataclass
class MessageBuilder:
    """Accumulates events into the message's fields."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # [name, arguments] by index

    def add(self, events: list[MessageEvent]) -> None:
        for event in events:
            if isinstance(event, ReasoningText):
                self.reasoning.append(event.text)
            elif isinstance(event, ContentText):
                self.content.append(event.text)
            elif isinstance(event, ToolCallStart):
                self.calls.append([event.name, ""])
            else:
                self.calls[event.index][1] += event.text
