"""The wire shape of a chat completion (spec §3) and of its stream (spec §4): message
events (reasoning, content, tool calls) from `output/message.py` in, JSON / SSE out.

Stream deltas, as DeepSeek sends them:
    first      {"role": "assistant", "content": ""}       reasoner: content null, reasoning ""
    reasoning  {"content": null, "reasoning_content": "…"}
    content    {"content": "…"}                           reasoner: + "reasoning_content": null
    tool call  {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}
               then {"tool_calls": [{"index", "function": {"arguments": "…"}}]} pieces
    last       {"content": ""} + finish_reason + usage    reasoner: + "reasoning_content": null
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from seekserve.api.chat_plan import ChatPlan
from seekserve.api.generation import Generation
from seekserve.api.sse import DONE, KEEPALIVE, dumps, encode_json_string, error_event, event
from seekserve.errors import EngineError
from seekserve.output.message import (
    ContentText,
    MessageBuilder,
    MessageEvent,
    MessageParser,
    ReasoningText,
)
from seekserve.output.tool_calls import ToolCallStart, tool_call_id


def finish_reason(gen: Generation, parser: MessageParser) -> str | None:
    """`tool_calls` when the model called a tool and stopped by itself."""
    if parser.num_tool_calls and gen.finish_reason == "stop":
        return "tool_calls"
    return gen.finish_reason


async def collect(
    gen: Generation, plan: ChatPlan, header: dict[str, Any], fingerprint: str, logprobs: bool
) -> dict[str, Any]:
    parser = plan.parser()
    built = MessageBuilder()
    entries: list[dict[str, Any]] = []
    async for delta in gen.deltas():
        built.add(parser.feed(delta.text, delta.num_new_tokens))
        entries.extend(gen.logprob_entries(delta))
    built.add(parser.finish())
    content = "".join(built.content)
    calls = [
        {
            "index": index,
            "id": tool_call_id(gen.request_id, index),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for index, (name, arguments) in enumerate(built.calls)
    ]
    return {
        **header,
        "choices": [
            {
                "index": 0,
                # every field of the seed's message schema, as vLLM also sends them
                "message": {
                    "role": "assistant",
                    "content": None if calls and not content else content,
                    "reasoning_content": "".join(built.reasoning) if plan.reasoning else None,
                    "tool_calls": calls,
                },
                "logprobs": {"content": entries} if logprobs else None,
                "finish_reason": finish_reason(gen, parser),
            }
        ],
        "usage": gen.usage(parser.num_reasoning_tokens),
        "system_fingerprint": fingerprint,
    }


class _Chunks:
    """Builds the chunk objects of one stream."""

    def __init__(
        self,
        gen: Generation,
        plan: ChatPlan,
        header: dict[str, Any],
        fingerprint: str,
        include_usage: bool,
        logprobs: bool,
    ) -> None:
        self.gen, self.reasoning = gen, plan.reasoning
        self.base = {**header, "object": "chat.completion.chunk", "system_fingerprint": fingerprint}
        self.include_usage, self.logprobs = include_usage, logprobs
        # logprobs of tokens whose text is still held back ride on the next chunk sent
        self.pending: list[dict[str, Any]] = []
        # A plain content chunk (no reasoning, no logprobs) as the text between two halves of
        # its encoding: the same bytes as `event(self.text("content", text))`, without a dict
        # built and encoded per token (the event loop's CPU per token, which the engine waits
        # for at high concurrency). NUL marks the place: JSON escapes it, so the encoded
        # marker occurs only where the text goes (the last occurrence; nothing after it holds
        # a string).
        self._content_halves: tuple[str, str] | None = None
        if not self.reasoning and not self.logprobs:
            head, _, tail = event(self.text("content", "\0")).rpartition(dumps("\0"))
            self._content_halves = (head, tail)

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        logprobs = None
        if self.logprobs and (self.pending or finish is not None):
            logprobs = {"content": self.pending[:]}
            self.pending.clear()
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        obj: dict[str, Any] = {**self.base, "choices": [choice]}
        if self.include_usage:
            obj["usage"] = None  # null on every chunk but the last (spec §4.4)
        return obj

    def first(self) -> dict[str, Any]:
        if self.reasoning:
            return self.chunk({"role": "assistant", "content": None, "reasoning_content": ""})
        return self.chunk({"role": "assistant", "content": ""})

    def text(self, kind: str, text: str) -> dict[str, Any]:
        if not self.reasoning:
            return self.chunk({"content": text})
        if kind == "reasoning":
            return self.chunk({"content": None, "reasoning_content": text})
        return self.chunk({"content": text, "reasoning_content": None})

    def tool_call(self, event: MessageEvent) -> dict[str, Any]:
        if isinstance(event, ToolCallStart):
            call = {
                "index": event.index,
                "id": tool_call_id(self.gen.request_id, event.index),
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
        else:
            call = {"index": event.index, "function": {"arguments": event.text}}
        return self.chunk({"tool_calls": [call]})

    def events(self, events: list[MessageEvent]) -> list[str]:
        """The SSE events of these message events: one chunk per run of same-kind text, one
        per tool-call fragment."""
        chunks: list[str] = []
        run_kind, run = "", ""
        for item in events:
            kind = "reasoning" if isinstance(item, ReasoningText) else "content"
            if isinstance(item, ReasoningText | ContentText) and kind in (run_kind, ""):
                run_kind, run = kind, run + item.text
                continue
            if run:
                chunks.append(self.text_event(run_kind, run))
                run_kind, run = "", ""
            if isinstance(item, ReasoningText | ContentText):
                run_kind, run = kind, item.text
            else:
                chunks.append(event(self.tool_call(item)))
        if run:
            chunks.append(self.text_event(run_kind, run))
        return chunks

    def text_event(self, kind: str, text: str) -> str:
        if self._content_halves is not None:
            head, tail = self._content_halves
            return head + encode_json_string(text) + tail
        return event(self.text(kind, text))

    def last(self, finish: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": ""}
        if self.reasoning:
            delta["reasoning_content"] = None
        obj = self.chunk(delta, finish)
        obj["usage"] = usage
        return obj


async def stream(
    gen: Generation,
    plan: ChatPlan,
    header: dict[str, Any],
    fingerprint: str,
    include_usage: bool,
    logprobs: bool,
    keepalive_interval_s: float,
) -> AsyncIterator[str]:
    chunks = _Chunks(gen, plan, header, fingerprint, include_usage, logprobs)
    parser = plan.parser()
    yield event(chunks.first())
    try:
        async for delta in gen.deltas(keepalive_interval_s):
            if delta is None:  # silent for a while (queued or a long prefill)
                yield KEEPALIVE
                continue
            chunks.pending.extend(gen.logprob_entries(delta))
            events = parser.feed(delta.text, delta.num_new_tokens)
            if delta.finish_reason is not None:
                events.extend(parser.finish())
            for sse_event in chunks.events(events):
                yield sse_event
            if delta.finish_reason is not None:
                usage = gen.usage(parser.num_reasoning_tokens)
                yield event(chunks.last(finish_reason(gen, parser), usage))
    except EngineError as exc:
        yield error_event(exc)
    yield DONE
