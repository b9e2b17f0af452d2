"""The async front's per-request output streams: time-limited waits that lose nothing, and
streams closed early abort their request on the engine thread."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

import pytest

from seekserve.engine.async_engine import GIL_SWITCH_INTERVAL_S, AsyncEngine, OutputStream
from seekserve.engine.outputs import EngineOutput
from seekserve.sampling_params import SamplingParams


def output(request_id: str, token_id: int, finish: str | None = None) -> EngineOutput:
    return EngineOutput(request_id, [token_id], finish, 3)


def test_a_wait_that_times_out_loses_nothing():
    async def main() -> list[object]:
        stream = OutputStream("r", 3, asyncio.get_running_loop())
        seen: list[object] = [await stream.get(0.01)]  # nothing yet: None after the limit
        asyncio.get_running_loop().call_later(0.02, stream.put, output("r", 7))
        seen.append(await stream.get(0.01))  # still nothing within this limit
        seen.append(await stream.get(1.0))  # ...and then the token
        stream.put(output("r", 8))
        stream.put(output("r", 9, "length"))
        seen += [await stream.get(0.0), stream.finished, await stream.get(None), stream.finished]
        return seen

    first, second, third, fourth, before, fifth, after = asyncio.run(main())
    assert first is None and second is None
    assert third.new_token_ids == [7] and fourth.new_token_ids == [8]
    assert (before, fifth.new_token_ids, fifth.finish_reason, after) == (False, [9], "length", True)


class FakeEngine:
    """Records what the engine thread is asked to do; each step finishes every request."""

    def __init__(self) -> None:
        self.running: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.release = threading.Event()

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def add_request(self, request_id, prompt_token_ids, params, cache_salt="") -> None:
        self.calls.append(("add", request_id))
        self.running.append(request_id)

    def abort_request(self, request_id: str) -> None:
        self.calls.append(("abort", request_id))
        if request_id in self.running:
            self.running.remove(request_id)

    def step(self) -> list[EngineOutput]:
        self.release.wait(5)
        done, self.running = self.running, []
        return [output(rid, 1, "length") for rid in done]

    def close(self) -> None:
        pass


def test_a_stream_closed_before_its_end_aborts_the_request_and_a_finished_one_does_not():
    fake = FakeEngine()
    params = SamplingParams(max_tokens=1)

    async def main() -> None:
        engine = AsyncEngine(lambda: fake)
        engine.start()
        try:
            early = engine.open("early", [1, 2, 3], params)
            assert (engine.num_in_flight, engine.num_in_flight_tokens) == (1, 3)
            engine.close(early)  # before any output: the request is aborted
            assert (engine.num_in_flight, engine.num_in_flight_tokens) == (0, 0)
            fake.release.set()
            done = engine.open("done", [1, 2], params)
            last = await done.get(5.0)
            assert last is not None and last.finish_reason == "length" and done.finished
            engine.close(done)
            engine.close(done)  # twice: nothing more
            assert engine.num_in_flight == 0
            await asyncio.sleep(0.1)  # the engine thread applies what it was sent
        finally:
            engine.stop()

    asyncio.run(main())
    assert ("abort", "done") not in fake.calls
    assert fake.calls.index(("add", "early")) < fake.calls.index(("abort", "early"))
    assert fake.calls[-1] == ("add", "done")


def test_the_engine_loads_with_the_cyclic_collector_off_and_freezes_what_it_made():
    """Loading a model makes hundreds of thousands of objects: no collector passes while it
    runs, the collector back on afterwards, and what survived frozen (later full passes skip
    it); a failed build restores the collector too."""
    seen: list[bool] = []

    def build() -> FakeEngine:
        seen.append(gc.isenabled())
        return FakeEngine()

    def failing_build() -> FakeEngine:
        seen.append(gc.isenabled())
        raise RuntimeError("no weights")

    async def main() -> None:
        gc.unfreeze()
        engine = AsyncEngine(build)
        engine.start()
        engine.stop()
        # outputs reach the event loop without waiting out CPython's 5 ms GIL switch interval
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S == 0.0005
        assert gc.isenabled() and gc.get_freeze_count() > 0
        with pytest.raises(RuntimeError, match="no weights"):
            AsyncEngine(failing_build).start()
        assert gc.isenabled()

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
    assert seen == [False, False]
