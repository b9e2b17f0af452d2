"""FCFS continuous-batching scheduler with one token budget per step and preemption.

Each step gives every running request the tokens it has not computed yet (1 for a decode, a
chunk of the prompt for a prefill), within `max_num_batched_tokens`, then admits waiting
requests in arrival order while the budget, `max_num_seqs` and free blocks allow (a request
starts after the longest prefix the KV cache already holds). When a
running request needs a block and none is free, the newest running request is preempted: its
blocks are freed and it goes back to the front of the waiting queue, to be recomputed later
from its prompt and the tokens it already produced.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from seekserve.config import SchedulerConfig
from seekserve.engine.disk_cache import DiskKVCache
from seekserve.engine.kv_cache import KVCacheManager
from seekserve.engine.outputs import EngineOutput, EngineStats, ScheduledRequest, SchedulerOutput
from seekserve.engine.request import Request, RequestStatus
from seekserve.sampling.sampler import TokenLogprob


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv_cache: KVCacheManager, disk: DiskKVCache | None = None
    ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.disk = disk
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()

    # -- requests in and out -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        assert request.request_id not in self.requests, f"duplicate id {request.request_id}"
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> Request | None:
        """Finish a request with reason "abort" and free its blocks; unknown ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.finish("abort")
        self._remove(request)
        return request

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    # -- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunks: dict[str, int] = {}
        preempted: list[str] = []
        kv_loads: list[tuple[int, Any]] = []

        # 1. running requests, oldest first; preempt the newest when blocks run out
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._make_room(request, num_new, preempted):
                break  # `request` itself was preempted
            self.kv_cache.allocate(request, num_new)
            chunks[request.request_id] = num_new
            budget -= num_new
            index += 1

        # 2. waiting requests in arrival order (none after a preemption: no room)
        while self.waiting and budget > 0 and not preempted:
            if len(self.running) >= self.config.max_num_seqs:
                break
            request = self.waiting[0]
            prefix = self.kv_cache.find_cached_prefix(request)
            loaded = self._load_from_disk(request, len(prefix))
            block_size = self.kv_cache.block_size
            num_cached = (len(prefix) + len(loaded)) * block_size
            num_new = min(request.num_tokens - num_cached, budget)
            # blocks read from disk need fresh blocks, like tokens still to compute
            num_to_place = len(loaded) * block_size + num_new
            if not self.kv_cache.can_allocate(request, num_to_place, prefix):
                break
            self.waiting.popleft()
            new_block_ids = self.kv_cache.allocate(request, num_to_place, prefix)
            kv_loads.extend(zip(new_block_ids, loaded, strict=False))
            request.num_computed_tokens = num_cached
            if request.num_cached_tokens is None:  # first admission: what usage reports
                request.num_cached_tokens = num_cached
                self.stats.num_requests_admitted += 1
                self.stats.num_prompt_tokens += request.num_prompt_tokens
                self.stats.num_cached_prompt_tokens += num_cached
                self.stats.num_disk_prompt_tokens += len(loaded) * block_size
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks[request.request_id] = num_new
            budget -= num_new

        # 3. build the output: decodes first, then prefill chunks
        scheduled = [self._scheduled(self.requests[rid], n) for rid, n in chunks.items()]
        scheduled.sort(key=lambda s: s.num_tokens > 1)
        return SchedulerOutput(scheduled, preempted, kv_loads)

    def update(
        self,
        output: SchedulerOutput,
        sampled_token_ids: dict[str, int],
        logprobs: dict[str, TokenLogprob] | None = None,
    ) -> list[EngineOutput]:
        """Advance every scheduled request and record its sampled token, if any."""
        results: list[EngineOutput] = []
        for scheduled in output.scheduled:
            request = self.requests.get(scheduled.request_id)
            if request is None:  # aborted while the step ran
                continue
            request.num_computed_tokens += scheduled.num_tokens
            self.kv_cache.cache_full_blocks(request)
            if not scheduled.needs_sample:
                continue
            token_id = sampled_token_ids[request.request_id]
            request.append_output_token(token_id)
            self.stats.num_generated_tokens += 1
            results.append(
                EngineOutput(
                    request_id=request.request_id,
                    new_token_ids=[token_id],
                    finish_reason=request.finish_reason,
                    num_prompt_tokens=request.num_prompt_tokens,
                    num_cached_tokens=request.num_cached_tokens or 0,
                    error=request.error,
                    logprobs=[logprobs[request.request_id]]
                    if logprobs and request.request_id in logprobs
                    else None,
                )
            )
            if request.is_finished:
                self._remove(request)
        return results

    # -- helpers -------------------------------------------------------------------------

    def _load_from_disk(self, request: Request, num_memory_blocks: int) -> list[Any]:
        """K/V of the blocks right after the in-memory prefix that the disk tier holds (a
        run of consecutive valid files; stops at the first miss)."""
        if self.disk is None or not self.kv_cache.enable_prefix_caching:
            return []
        max_blocks = self.kv_cache.max_cached_blocks(request)
        hashes = self.kv_cache.block_hashes(request, max_blocks)[num_memory_blocks:]
        loaded = []
        for block_hash in hashes:
            data = self.disk.load(block_hash)
            if data is None:
                break
            loaded.append(data)
        return loaded

    def _make_room(self, request: Request, num_new: int, preempted: list[str]) -> bool:
        """Preempt from the back of `running` until `request` fits; False if it went itself."""
        while not self.kv_cache.can_allocate(request, num_new):
            victim = self.running.pop()
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=request.token_ids[start : start + num_new],
            start_position=start,
            block_ids=list(self.kv_cache.block_table(request.request_id)),
            needs_sample=start + num_new == request.num_tokens,
        )

    def _remove(self, request: Request) -> None:
        self.kv_cache.free(request)
        del self.requests[request.request_id]
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
