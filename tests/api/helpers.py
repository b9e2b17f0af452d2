"""Assertions shared by the HTTP tests: the DeepSeek error envelope, SSE framing, idleness."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from seekserve.engine.engine import Engine

MODEL = "deepseek-chat"
CHAT = "/chat/completions"
DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


def chat_body(**fields: Any) -> dict[str, Any]:
    """A valid request (greedy, short) with `fields` merged in."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "max_tokens": 4,
    }
    body.update(fields)
    return body


def error_envelope(message: str, error_type: str = "invalid_request_error") -> dict[str, Any]:
    """DeepSeek's envelope: `param` is always null and `code` always invalid_request_error
    (spec §13.1)."""
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": "invalid_request_error",
        }
    }


def assert_error(
    response: httpx.Response,
    status: int,
    message: str,
    param: str | None = None,
    error_type: str = "invalid_request_error",
) -> None:
    """The response is exactly DeepSeek's error envelope with this status and message, and
    the message names the offending field `param` (DeepSeek's `param` itself is null)."""
    assert (response.status_code, response.json()) == (
        status,
        error_envelope(message, error_type),
    )
    if param is not None:  # e.g. "tools[0].function" → the message says "function"
        name = param.rsplit(".", 1)[-1].split("[")[0]
        assert name.lower() in message.lower(), f"message does not name {param!r}: {message!r}"
    assert response.headers["content-type"] == "application/json"


def engine_of(client: Any) -> Engine:
    """The synchronous engine behind deepseek-chat (read-only use from tests)."""
    return client.app.state.seekserve.models[MODEL].engine.engine


def wait_until_idle(engine: Engine, timeout_s: float = 5.0) -> None:
    """Poll (bounded) until no request is unfinished and every KV block is free."""
    deadline = time.monotonic() + timeout_s
    kv = engine.kv_cache
    while True:
        idle = not engine.has_unfinished_requests()
        if idle and kv.num_free_blocks == kv.num_total_blocks:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"engine not idle after {timeout_s} s: unfinished "
                f"{engine.has_unfinished_requests()}, free blocks {kv.num_free_blocks} of "
                f"{kv.num_total_blocks}"
            )
        time.sleep(0.01)


def assert_still_serving(client: Any, headers: dict[str, str] | None = None) -> None:
    """A valid request still gets a full answer, and nothing leaked in the engine."""
    response = client.post(CHAT, json=chat_body(max_tokens=2), headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    wait_until_idle(engine_of(client))


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The chunks of an SSE response, checking the framing exactly: every event is one
    `data: <compact json>` line followed by a blank line, and the last is `data: [DONE]`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    text = response.text
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]"
    chunks = []
    for event in events[:-1]:
        assert event.startswith("data: ")
        assert "\n" not in event
        payload = event.removeprefix("data: ")
        chunk = json.loads(payload)
        # compact JSON, non-ASCII kept as is (what `data: ` lines look like on the wire)
        assert payload == json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
        chunks.append(chunk)
    return chunks
