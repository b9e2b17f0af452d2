"""One generation request as the engine sees it: token ids and progress, no text.

The single progress variable is `num_computed_tokens`, which catches up with `num_tokens`:

    token_ids:  | prompt ............................ | output ..... |
                |<-- num_computed_tokens -->|<- scheduled this step ->|
                                                      ^ a step that reaches num_tokens samples

Prefill, chunked prefill, recompute after preemption and decode are all "schedule some of the
tokens not yet computed".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from seekserve.sampling.constraints import GrammarConstraint
from seekserve.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    """Token ids that end generation (unless `sampling_params.ignore_eos`)."""
    max_model_len: int
    """Generation ends with `length` when prompt + output reaches this."""
    arrival_time: float = 0.0
    cache_salt: str = ""
    """Prefix-cache scope: requests share cached blocks only with the same salt."""
    token_ids: list[int] = field(init=False)
    """prompt + output, kept as one list so a step reads a slice without copying both."""
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    """"stop", "length" or "abort" once finished."""
    num_preemptions: int = 0
    num_cached_tokens: int | None = None
    """Prompt tokens whose K/V came from the prefix cache at first admission (usage)."""
    block_hashes: list[bytes] = field(default_factory=list)
    """Chained hashes of the full blocks of token_ids, filled lazily by the KV manager."""
    constraint: GrammarConstraint | None = None
    """The request's grammar state when its output is constrained (JSON mode, tools)."""
    error: str | None = None
    """Why the request failed inside the engine (it finished with "abort")."""

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output_token(self, token_id: int) -> None:
        """Record a sampled token and finish the request if it ends generation."""
        self.token_ids.append(token_id)
        params = self.sampling_params
        is_eos = not params.ignore_eos and token_id in self.eos_token_ids
        if is_eos or token_id in params.stop_token_ids:
            self.finish("stop")
        elif self.constraint is not None and (
            not self.constraint.accept(token_id) or self.constraint.is_complete
        ):
            if self.constraint.error is not None:  # this request alone fails
                self.error = self.constraint.error
                self.finish("abort")
            else:
                self.finish("stop")  # the constrained value is closed
        elif self.num_output_tokens >= params.max_tokens or self.num_tokens >= self.max_model_len:
            self.finish("length")

    def finish(self, reason: str) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
