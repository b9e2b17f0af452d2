"""The async front: one engine thread runs the step loop; asyncio code submits and streams.

    event loop (uvicorn)                          engine thread
    ────────────────────                          ─────────────
    generate() ── put(("add", …)) ──► commands ──► engine.add_request
                                                  engine.step()
    per-request asyncio.Queue ◄── call_soon_threadsafe(put_nowait, EngineOutput)
    consumer gone ── put(("abort", id)) ──────────► engine.abort_request (blocks freed)

The engine object is touched only by its thread; the two sides meet at `_commands` (a
thread-safe queue) and the per-request asyncio queues.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from seekserve.engine.engine import Engine
from seekserve.engine.outputs import EngineOutput
from seekserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[EngineOutput]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="seekserve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._commands.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def num_active_requests(self) -> int:
        return len(self._streams)

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[EngineOutput]:
        """Yield the request's outputs until it finishes. Closing the iterator early (client
        gone, stop string found) aborts the request and frees its blocks."""
        stream: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._streams[request_id] = stream
        self._commands.put(("add", (request_id, prompt_token_ids, params)))
        finished = False
        try:
            while True:
                output = await stream.get()
                finished = output.finish_reason is not None
                yield output
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.put(("abort", request_id))

    # -- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._drain_commands(block=not self.engine.has_unfinished_requests())
            if self._stopping.is_set():
                break
            try:
                outputs = self.engine.step()
            except Exception:  # one bad step must not kill the server
                logger.exception("engine step failed; failing the requests of this step")
                outputs = self._fail_all("internal error in the engine step")
            for output in outputs:
                self._publish(output)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, kind: str, payload: Any) -> None:
        if kind == "add":
            request_id, prompt_token_ids, params = payload
            try:
                self.engine.add_request(request_id, prompt_token_ids, params)
            except ValueError as exc:
                self._publish(EngineOutput(request_id, [], "abort", 0, error=str(exc)))
        elif kind == "abort":
            self.engine.abort_request(request_id=payload)

    def _fail_all(self, message: str) -> list[EngineOutput]:
        failed = []
        for request_id in list(self.engine.scheduler.requests):
            output = self.engine.abort_request(request_id)
            if output is not None:
                failed.append(
                    EngineOutput(request_id, [], "abort", output.num_prompt_tokens, error=message)
                )
        return failed

    def _publish(self, output: EngineOutput) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, output)

    def _deliver(self, output: EngineOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is not None:
            stream.put_nowait(output)
