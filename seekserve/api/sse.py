"""Server-sent events framing, as DeepSeek sends it: compact JSON, `data: [DONE]` last."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from json.encoder import encode_basestring as _encode_basestring
from typing import Any

from fastapi.responses import StreamingResponse

from seekserve.errors import to_status_and_body

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream; charset=utf-8", headers={"cache-control": "no-cache"}
    )


def error_event(exc: BaseException) -> str:
    """The error envelope as the last data event of a stream that failed after it began."""
    return event(to_status_and_body(exc)[1])


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def encode_json_string(text: str) -> str:
    """`dumps(text)` for a str, quotes included: the encoder `dumps` itself uses for strings."""
    return _encode_basestring(text)


def event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"
