"""Per-request output state: engine outputs in, text deltas and the finish reason out."""

from __future__ import annotations

from dataclasses import dataclass, field

from seekserve.engine.outputs import EngineOutput
from seekserve.output.detokenizer import Decoder, IncrementalDetokenizer
from seekserve.output.stop import StopChecker
from seekserve.sampling.sampler import TokenLogprob


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    # "stop" | "length" | "abort" when the request ended with this delta
    finish_reason: str | None
    num_output_tokens: int
    """Tokens generated so far (what usage.completion_tokens reports)."""
    num_new_tokens: int = 0
    """Tokens this delta covers."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Logprobs of the tokens this delta covers (when requested); the EOS / stop token that
    ends a request is not reported, as it adds no text."""


class RequestOutputState:
    """Turns one request's EngineOutputs into text. After a delta with `finish_reason` set by
    a stop string, the caller must stop the engine request (close its stream)."""

    def __init__(self, tokenizer: Decoder, stops: tuple[str, ...]) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop_checker = StopChecker(stops)
        self.num_output_tokens = 0
        self.finish_reason: str | None = None

    def process(self, output: EngineOutput) -> TextDelta:
        assert self.finish_reason is None, "output after the request finished"
        self.num_output_tokens += len(output.new_token_ids)
        text, stopped = self.stop_checker.feed(self.detokenizer.add(output.new_token_ids))
        logprobs = list(output.logprobs or [])
        if stopped:
            self.finish_reason = "stop"
        elif output.finish_reason is not None:
            self.finish_reason = output.finish_reason
            text += self.stop_checker.flush()
            if output.finish_reason == "stop":  # ended on an EOS / stop token id
                logprobs = logprobs[: len(logprobs) - 1]
        return TextDelta(
            text,
            self.finish_reason,
            self.num_output_tokens,
            len(output.new_token_ids),
            logprobs,
        )
