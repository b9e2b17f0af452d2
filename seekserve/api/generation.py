"""One chat request's run through the engine: token ids in, text deltas out.

Shared by the JSON and the SSE responses so both report the same text, finish reason and
usage. Leaving the iteration early (client gone, stop string) aborts the engine request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from seekserve.api.protocol import GenerationRequest
from seekserve.api.state import ServedModel, ServerState
from seekserve.errors import ContextTooLong, EngineError, InvalidRequest, Overloaded
from seekserve.output.processor import RequestOutputState, TextDelta
from seekserve.sampling.sampler import TokenLogprob
from seekserve.sampling_params import GrammarSpec, SamplingParams
from seekserve.usage import usage_dict

if TYPE_CHECKING:
    from seekserve.api.routes.metrics import ServerMetrics


@dataclass
class Generation:
    served: ServedModel
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str = ""
    start_deadline_s: float = 600.0
    """A request still waiting for its first token after this long is given up (503)."""
    on_finish: Callable[[Generation], None] | None = None
    """Called once when the run ends, however it ends (usage accounting)."""
    metrics: ServerMetrics | None = None
    """Where time to first token, inter-token and end-to-end latency go (None: nowhere)."""
    arrival_s: float = field(default_factory=time.monotonic)
    """`time.monotonic()` when the HTTP request arrived: the start of the latencies."""
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    finish_reason: str | None = None
    _state: RequestOutputState = field(init=False)
    _last_token_s: float | None = field(init=False, default=None)
    _inter_token: Any = field(init=False, default=None)
    """The inter-token histogram of this model (its labelled child, looked up once)."""

    def __post_init__(self) -> None:
        self._state = RequestOutputState(self.served.tokenizer, self.params.stop)

    async def deltas(self, idle_s: float | None = None) -> AsyncIterator[TextDelta | None]:
        """The request's text deltas until it finishes; with `idle_s`, also None whenever no
        output came for that long (queued, a long prefill: send a keep-alive then). Leaving
        early aborts the engine request. 503 when it has not started within the deadline
        (DeepSeek closes a request that has not started inference after 10 minutes)."""
        engine = self.served.engine
        stream = engine.open(self.request_id, self.prompt_token_ids, self.params, self.cache_salt)
        started = False
        deadline_s = time.monotonic() + self.start_deadline_s
        try:
            while True:
                timeout_s = idle_s
                if not started:
                    left_s = deadline_s - time.monotonic()
                    if left_s <= 0:
                        raise Overloaded(
                            "Server Overloaded: the request did not start within "
                            f"{self.start_deadline_s:g} s"
                        )
                    timeout_s = left_s if idle_s is None else min(idle_s, left_s)
                output = await stream.get(timeout_s)
                if output is None:
                    if idle_s is not None and (started or time.monotonic() < deadline_s):
                        yield None
                    continue
                started = True
                if output.error is not None:
                    raise EngineError(output.error)
                self.num_cached_tokens = output.num_cached_tokens
                delta = self._state.process(output)
                self._observe_tokens(delta.num_output_tokens - self.num_output_tokens)
                self.num_output_tokens = delta.num_output_tokens
                self.finish_reason = delta.finish_reason
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            engine.close(stream)
            if self.metrics is not None and self.finish_reason is not None:
                latency_s = time.monotonic() - self.arrival_s
                self.metrics.e2e_request_latency.labels(self.served.name).observe(latency_s)
            if self.on_finish is not None:
                self.on_finish(self)

    def _observe_tokens(self, num_new_tokens: int) -> None:
        """Time to first token on the first output with tokens, then the gap since the
        previous one (one token per output, so one sample per token after the first)."""
        if num_new_tokens <= 0:
            return
        now, last = time.monotonic(), self._last_token_s
        self._last_token_s = now
        if self.metrics is None:
            return
        if last is None:
            self.metrics.time_to_first_token.labels(self.served.name).observe(now - self.arrival_s)
            self._inter_token = self.metrics.inter_token_latency.labels(self.served.name)
        else:
            self._inter_token.observe(now - last)

    @classmethod
    def start(
        cls,
        state: ServerState,
        request: Request,
        served: ServedModel,
        req: GenerationRequest,
        prompt_token_ids: list[int],
        params: SamplingParams,
    ) -> Generation:
        """A new request id; the prefix-cache scope is the key's, narrowed by `cache_salt`.
        503 when the model's admission queue is full (requests or prompt tokens)."""
        engine, limits = served.engine, state.config
        if (
            engine.num_in_flight >= limits.max_queued_requests
            or engine.num_in_flight_tokens + len(prompt_token_ids) > limits.max_queued_tokens
        ):
            raise Overloaded("Server Overloaded")
        salt = state.cache_salt(request) + "\x00" + (req.cache_salt or "")
        accounts, request_state = state.accounts, request.state

        def charge(gen: Generation) -> None:
            assert accounts is not None
            accounts.charge(
                request_state,
                served.name,
                served.config.prices,
                gen.request_id,
                len(gen.prompt_token_ids),
                gen.num_cached_tokens,
                gen.num_output_tokens,
            )

        generation = cls(
            served,
            str(uuid.uuid4()),
            prompt_token_ids,
            params,
            cache_salt=salt,
            start_deadline_s=state.config.start_deadline_s,
            on_finish=charge,
            metrics=state.metrics,
            arrival_s=getattr(request_state, "arrival_s", None) or time.monotonic(),
        )
        request_state.generation = generation  # the access log reads its model and tokens
        return generation

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the output, if one did."""
        return self._state.stop_checker.matched

    def header(self, object_name: str) -> dict[str, Any]:
        """The leading fields of every response body and chunk."""
        return {
            "id": self.request_id,
            "object": object_name,
            "created": int(time.time()),
            "model": self.served.name,
        }

    def logprob_entries(self, delta: TextDelta) -> list[dict[str, Any]]:
        """The delta's tokens in the wire shape of `logprobs.content[]` (spec §3)."""
        return [self._entry(entry) for entry in delta.logprobs]

    def _entry(self, entry: TokenLogprob) -> dict[str, Any]:
        item = self._token(entry.token_id, entry.logprob)
        item["top_logprobs"] = [self._token(tid, lp) for tid, lp in entry.top]
        return item

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        raw = self.served.tokenizer.token_bytes(token_id)
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": logprob,
            "bytes": list(raw),
        }

    def usage(self, num_reasoning_tokens: int = 0) -> dict:
        return usage_dict(
            len(self.prompt_token_ids),
            self.num_output_tokens,
            self.num_cached_tokens,
            num_reasoning_tokens,
        )


def build_sampling_params(
    req: GenerationRequest,
    served: ServedModel,
    num_prompt_tokens: int,
    *,
    max_output_tokens: int,
    logprobs: int | None = None,
    grammar: GrammarSpec | None = None,
) -> SamplingParams:
    """Request value → server default → API default, with DeepSeek's range and context
    checks (spec §2.2, §13)."""
    cfg, max_len = served.config, served.max_model_len
    if req.max_tokens is not None:
        if not 1 <= req.max_tokens <= max_output_tokens:
            raise InvalidRequest(
                "Invalid max_tokens value, the valid range of max_tokens is "
                f"[1, {max_output_tokens}]",
                param="max_tokens",
            )
        max_tokens = req.max_tokens
    else:
        default = min(cfg.output_tokens_default, max_output_tokens)
        max_tokens = max(1, min(default, max_len - num_prompt_tokens))
    if num_prompt_tokens + max_tokens > max_len:
        raise ContextTooLong.for_lengths(max_len, num_prompt_tokens, max_tokens)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        stop=req.stop_list,
        ignore_eos=bool(req.ignore_eos),
        logprobs=logprobs,
        grammar=grammar,
    )
