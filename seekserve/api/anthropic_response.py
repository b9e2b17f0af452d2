"""The wire shape of an Anthropic message and of its stream: message events (reasoning,
content, tool calls) from `output/message.py` in, a `message` body or Anthropic SSE out.

Content blocks follow the output order; a change of kind closes the open block:

    ReasoningText ─► thinking block   {"type": "thinking", "thinking", "signature": ""}
    ContentText   ─► text block       {"type": "text", "text"}
    ToolCallStart ─► tool_use block   {"type": "tool_use", "id", "name", "input"}
    ToolCallArgs  ─►   its input, streamed as the model writes it (input_json_delta)

Stream events, as the anthropic SDK reads them:
    message_start        the message with empty content, stop_reason null
    ping                 after message_start, and while the request is silent (keep-alive)
    content_block_start / content_block_delta (text_delta | thinking_delta | input_json_delta)
    / content_block_stop per block
    message_delta        stop_reason, stop_sequence, the final usage (totals, not increments)
    message_stop
    error                {"type": "error", "error": DeepSeek's error object} on a failure

NOTE: `input_tokens` counts the prompt tokens not read from the cache, as Anthropic counts
them: input_tokens + cache_read_input_tokens is the prompt (cache hits in DeepSeek's 64-token
units). The body and the stream's accumulated message are equal, field for field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from seekserve.api.chat_plan import ChatPlan
from seekserve.api.generation import Generation
from seekserve.api.sse import dumps
from seekserve.errors import ApiError, EngineError, to_status_and_body
from seekserve.output.message import ContentText, MessageEvent, MessageParser, ReasoningText
from seekserve.output.tool_calls import ToolCallStart, tool_call_id
from seekserve.usage import cache_hit_tokens

WireEvent = tuple[str, dict[str, Any]]
"""(SSE event name, its data object)."""


class ContentBlocks:
    """Folds message events into content blocks, and says what to stream for each."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None  # kind of the last block while it is open
        self._arguments = ""  # the open tool_use block's input text so far

    def add(self, events: list[MessageEvent]) -> list[WireEvent]:
        wire: list[WireEvent] = []
        for item in events:
            if isinstance(item, ReasoningText):
                wire += self._text("thinking", item.text)
            elif isinstance(item, ContentText):
                wire += self._text("text", item.text)
            elif isinstance(item, ToolCallStart):
                block = {
                    "type": "tool_use",
                    "id": tool_call_id(self.request_id, item.index),
                    "name": item.name,
                    "input": {},
                }
                wire += self._start(block)
            else:
                assert self._open == "tool_use", "tool-call arguments outside a call"
                self._arguments += item.text
                delta = {"type": "input_json_delta", "partial_json": item.text}
                wire.append(self._delta(delta))
        return wire

    def close(self) -> list[WireEvent]:
        """End the open block (a tool_use block gets its parsed input)."""
        if self._open is None:
            return []
        if self._open == "tool_use":
            self.blocks[-1]["input"] = _parse_input(self._arguments)
            self._arguments = ""
        self._open = None
        index = len(self.blocks) - 1
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _text(self, kind: str, text: str) -> list[WireEvent]:
        if not text:
            return []
        wire = []
        if self._open != kind:
            empty = {"type": "thinking", "thinking": "", "signature": ""}
            wire += self._start(empty if kind == "thinking" else {"type": "text", "text": ""})
        self.blocks[-1][kind] += text
        delta_type = "thinking_delta" if kind == "thinking" else "text_delta"
        wire.append(self._delta({"type": delta_type, kind: text}))
        return wire

    def _start(self, block: dict[str, Any]) -> list[WireEvent]:
        wire = self.close()
        self.blocks.append(block)
        self._open = block["type"]
        start = {"type": "content_block_start", "index": len(self.blocks) - 1}
        wire.append(("content_block_start", {**start, "content_block": dict(block)}))
        return wire

    def _delta(self, delta: dict[str, Any]) -> WireEvent:
        index = len(self.blocks) - 1
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": index,
            "delta": delta,
        }


def _parse_input(arguments: str) -> dict[str, Any]:
    """The arguments the model wrote as an object; {} when they are not a JSON object (a
    call cut short by max_tokens)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(gen: Generation, parser: MessageParser) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): a matched stop string, the token limit, a tool call the
    model ended by itself, or the end of its turn."""
    if gen.stop_sequence is not None:
        return "stop_sequence", gen.stop_sequence
    if gen.finish_reason == "length":
        return "max_tokens", None
    if parser.num_tool_calls:
        return "tool_use", None
    return "end_turn", None


def usage(gen: Generation, num_output_tokens: int | None = None) -> dict[str, Any]:
    hit = cache_hit_tokens(gen.num_cached_tokens)
    return {
        "input_tokens": len(gen.prompt_token_ids) - hit,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": hit,
        "output_tokens": gen.num_output_tokens if num_output_tokens is None else num_output_tokens,
    }


def message(
    gen: Generation,
    content: list[dict[str, Any]],
    stop: tuple[str | None, str | None],
    usage_: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": message_id(gen),
        "type": "message",
        "role": "assistant",
        "model": gen.served.name,
        "content": content,
        "stop_reason": stop[0],
        "stop_sequence": stop[1],
        "usage": usage_,
    }


def message_id(gen: Generation) -> str:
    return "msg_" + gen.request_id.replace("-", "")


async def collect(gen: Generation, plan: ChatPlan) -> dict[str, Any]:
    parser = plan.parser()
    blocks = ContentBlocks(gen.request_id)
    async for delta in gen.deltas():
        blocks.add(parser.feed(delta.text, delta.num_new_tokens))
    blocks.add(parser.finish())
    blocks.close()
    return message(gen, blocks.blocks, stop_reason(gen, parser), usage(gen))


def sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {dumps(data)}\n\n"


PING = sse("ping", {"type": "ping"})


async def stream(
    gen: Generation, plan: ChatPlan, keepalive_interval_s: float
) -> AsyncIterator[str]:
    parser = plan.parser()
    blocks = ContentBlocks(gen.request_id)
    # the prompt is known now; cache hits are only known once the request runs
    start = message(gen, [], (None, None), usage(gen, num_output_tokens=0))
    start["usage"].update(input_tokens=len(gen.prompt_token_ids), cache_read_input_tokens=0)
    yield sse("message_start", {"type": "message_start", "message": start})
    yield PING
    try:
        async for delta in gen.deltas(keepalive_interval_s):
            if delta is None:  # silent for a while (queued or a long prefill)
                yield PING
                continue
            events = parser.feed(delta.text, delta.num_new_tokens)
            if delta.finish_reason is not None:
                events.extend(parser.finish())
            wire = blocks.add(events)
            if delta.finish_reason is not None:
                wire += blocks.close()
            for name, data in wire:
                yield sse(name, data)
    except (ApiError, EngineError) as exc:  # after the 200 went out: an error event
        error = to_status_and_body(exc)[1]["error"]
        yield sse("error", {"type": "error", "error": error})
        return
    reason, sequence = stop_reason(gen, parser)
    yield sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(gen),
        },
    )
    yield sse("message_stop", {"type": "message_stop"})
