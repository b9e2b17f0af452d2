"""Stage contracts: what the scheduler hands the runner, and what the engine hands its clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from seekserve.sampling.sampler import TokenLogprob


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    """One request's share of a step. Set by the scheduler, read by `runner/inputs.py`."""

    request_id: str
    # tokens to run this step: token_ids[num_computed_tokens : num_computed_tokens + n]
    token_ids: list[int]
    # position of token_ids[0] in the request (= num_computed_tokens before the step)
    start_position: int
    # the request's whole block table after this step's allocation
    block_ids: list[int]
    # True when this chunk reaches the end of the known tokens, so a token is sampled
    needs_sample: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    # batch order: single-token chunks (decodes) first, then longer chunks (prefills)
    scheduled: list[ScheduledRequest]
    # requests pushed back to waiting this step; their blocks were freed
    preempted_request_ids: list[str]
    # (block id, K/V data) read from the disk tier: copy into the cache before the forward
    kv_loads: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class EngineStats:
    """Cumulative counters of one engine, written by the engine thread, read by /metrics."""

    num_requests_admitted: int = 0
    # prompt tokens of admitted requests, and how many of them came from the prefix cache
    num_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_preemptions: int = 0
    # prompt tokens among num_cached_prompt_tokens whose blocks were read from disk
    num_disk_prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EngineOutput:
    """What one step produced for one request; streamed to the request's consumer."""

    request_id: str
    new_token_ids: list[int]
    # "stop" | "length" | "abort" when the request finished this step, else None
    finish_reason: str | None
    num_prompt_tokens: int
    # prompt tokens whose KV came from the prefix cache (0 until the prefix cache lands)
    num_cached_tokens: int = 0
    # set when the request failed inside the engine; the consumer reports it
    error: str | None = None
    # one entry per new token when the request asked for logprobs
    logprobs: list[TokenLogprob] | None = None
