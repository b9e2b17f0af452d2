"""Non-stream responses: abort work whose client has gone (race it against
`http.disconnect`), and keep a waiting client's connection alive with blank lines (spec
§8.10)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from seekserve.api.sse import dumps
from seekserve.errors import ApiError, EngineError, to_status_and_body

logger = logging.getLogger(__name__)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def json_response(
    request: Request, work: Coroutine[Any, Any, Any], keepalive_interval_s: float
) -> Response:
    """The JSON body `work` returns. When it takes longer than `keepalive_interval_s`
    (queued, or a long generation) the status is committed as 200 and a blank line goes out
    every interval until the body follows (leading whitespace is valid JSON); an error
    after that point is sent as the error envelope in the body. A client that disconnects
    cancels `work` either way."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, watcher}, timeout=keepalive_interval_s, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return JSONResponse(task.result())
    if watcher in done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return Response(status_code=499)  # client gone; nobody reads this
    return StreamingResponse(
        _blank_lines_then_body(task, keepalive_interval_s), 200, None, media_type="application/json"
    )


async def _blank_lines_then_body(
    task: asyncio.Future[Any], interval_s: float
) -> AsyncIterator[str]:
    try:
        while not (await asyncio.wait({task}, timeout=interval_s))[0]:
            yield "\n"
        try:
            body = task.result()
        except (ApiError, EngineError) as exc:
            if isinstance(exc, EngineError):
                logger.error("request failed after its response began: %s", exc)
            body = to_status_and_body(exc)[1]
        yield dumps(body)
    finally:
        if not task.done():  # the client went away (the stream was cancelled)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
