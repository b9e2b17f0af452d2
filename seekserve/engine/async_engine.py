"""The async front: one engine thread runs the step loop; asyncio code submits and streams.

    event loop (uvicorn)                          engine thread
    ────────────────────                          ─────────────
    open() ── put(("add", …)) ──► commands ──────► engine.add_request
                                                  engine.step()
    per-request OutputStream ◄── call_soon_threadsafe(deliver, step's EngineOutputs)
    stream closed early ── put(("abort", id)) ───► engine.abort_request (blocks freed)

The engine object is touched only by its thread; the two sides meet at `_commands` (a
thread-safe queue) and the per-request output streams.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from seekserve.engine.engine import Engine
from seekserve.engine.outputs import EngineOutput
from seekserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL_S = 0.0005
"""`sys.setswitchinterval` while an engine runs (`AsyncEngine.start`)."""


class OutputStream:
    """One request's outputs, in the order the engine thread delivered them. `get` waits
    with an optional time limit and never loses an output: the keep-alive of an SSE stream is
    a time limit on this wait (a task and `asyncio.wait` per token cost ~9 µs of the event
    loop's CPU, which at c=64 the engine threads wait for)."""

    __slots__ = ("request_id", "num_prompt_tokens", "finished", "_items", "_waiter", "_loop")

    def __init__(
        self, request_id: str, num_prompt_tokens: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.finished = False
        """True once the output with a finish reason has been taken."""
        self._items: collections.deque[EngineOutput] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop

    def put(self, output: EngineOutput) -> None:
        self._items.append(output)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout_s: float | None = None) -> EngineOutput | None:
        """The next output; None when none came within `timeout_s` (None: wait as long as it
        takes)."""
        if not self._items:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            if timeout_s is not None:
                timer = self._loop.call_later(max(timeout_s, 0.0), _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                return None
        output = self._items.popleft()
        if output.finish_reason is not None:
            self.finished = True
        return output


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AsyncEngine:
    """`build_engine` runs on the engine thread (see `llm.ModelFiles`): the thread that steps
    the model is the only one that runs torch work."""

    def __init__(self, build_engine: Callable[[], Engine]) -> None:
        self._build_engine = build_engine
        self.engine: Engine | None = None
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, OutputStream] = {}
        self._in_flight_tokens = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def num_in_flight(self) -> int:
        """Requests generating or waiting for admission (their streams are open)."""
        return len(self._streams)

    @property
    def num_in_flight_tokens(self) -> int:
        """Prompt tokens of the requests in flight."""
        return self._in_flight_tokens

    @property
    def max_model_len(self) -> int:
        assert self.engine is not None, "start() first"
        return self.engine.max_model_len

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the engine thread and wait until it has built the engine (weights loaded).
        Call from the event loop that will consume the outputs, or pass that loop (a caller
        on another thread: loading while the server answers); re-raises a build error."""
        self._loop = loop or asyncio.get_running_loop()
        # The event loop and the engine thread share the GIL, which CPython hands to a waiting
        # thread only after the holder has run for the switch interval (5 ms by default): the
        # first token of a request, published at the end of its prefill step, waited ~4.5 ms
        # for the event loop while the engine thread ran the next step's Python. At 0.5 ms it
        # reached the client 0.6 ms after the step (1,130-token prompt, SmolLM2-135M).
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._main, name="seekserve-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._build_error is not None:
            raise self._build_error

    def stop(self) -> None:
        self._stopping.set()
        self._commands.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=10)

    def open(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        cache_salt: str = "",
    ) -> OutputStream:
        """Submit the request; its outputs arrive on the returned stream. Every stream opened
        must be closed (`close`), which aborts the request if it has not finished."""
        assert self._loop is not None, "start() first"
        stream = OutputStream(request_id, len(prompt_token_ids), self._loop)
        self._streams[request_id] = stream
        self._in_flight_tokens += stream.num_prompt_tokens
        self._commands.put(("add", (request_id, prompt_token_ids, params, cache_salt)))
        return stream

    def close(self, stream: OutputStream) -> None:
        """Stop delivering to `stream`; an unfinished request is aborted (blocks freed)."""
        if self._streams.pop(stream.request_id, None) is None:
            return
        self._in_flight_tokens -= stream.num_prompt_tokens
        if not stream.finished:
            self._commands.put(("abort", stream.request_id))

    # -- engine thread -------------------------------------------------------------------

    def _main(self) -> None:
        # Loading makes hundreds of thousands of objects (GGUF tensors, tokenizer, torch
        # modules): with the cyclic collector on, its full passes took ~3 s of a 14 s start-up
        # (SmolLM2-135M). Off while loading; what loading kept is then frozen, so that later
        # full passes skip it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.engine = self._build_engine()
        except BaseException as exc:  # reported to start()'s caller
            self._build_error = exc
            return
        finally:
            if collecting:
                gc.enable()
            gc.collect()
            gc.freeze()
            self._ready.set()
        try:
            self._run(self.engine)
        finally:
            self.engine.close()

    def _run(self, engine: Engine) -> None:
        while not self._stopping.is_set():
            self._drain_commands(engine, block=not engine.has_unfinished_requests())
            if self._stopping.is_set():
                break
            try:
                outputs = engine.step()
            except Exception:  # one bad step must not kill the server
                logger.exception("engine step failed; failing the requests of this step")
                outputs = engine.fail_requests(list(engine.scheduler.requests))
            if outputs:
                self._publish(*outputs)

    def _drain_commands(self, engine: Engine, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(engine, *command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, engine: Engine, kind: str, payload: Any) -> None:
        if kind == "add":
            request_id, prompt_token_ids, params, cache_salt = payload
            try:
                engine.add_request(request_id, prompt_token_ids, params, cache_salt=cache_salt)
            except ValueError as exc:
                self._publish(EngineOutput(request_id, [], "abort", 0, error=str(exc)))
        elif kind == "abort":
            engine.abort_request(request_id=payload)

    def _publish(self, *outputs: EngineOutput) -> None:
        """Hand outputs to the event loop: one wake-up per step, not one per request."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _deliver(self, outputs: tuple[EngineOutput, ...]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
