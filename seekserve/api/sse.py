"""Server-sent events framing, as DeepSeek sends it: compact JSON, `data: [DONE]` last."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from seekserve.errors import to_status_and_body

T = TypeVar("T")

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


def event(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


async def with_keepalive(iterator: AsyncIterator[T], interval_s: float) -> AsyncIterator[T | None]:
    """Items of `iterator`, and None whenever it stays silent for `interval_s` (send a
    keep-alive then). The pending item is awaited, never cancelled, between keep-alives;
    closing this iterator cancels it (which aborts the request behind it)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
