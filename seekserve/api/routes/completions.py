"""`POST /completions`: FIM completion, a beta-only endpoint (spec §7).

Under `/beta`: `prompt` (+ `suffix` for fill-in-the-middle with the model's FIM tokens),
`echo`, integer `logprobs` (the `text_completion` logprobs shape), `max_tokens` ≤ 4096,
`stop`, `stream`. Without `/beta`: DeepSeek's 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from seekserve.api.accounts import ReleasingResponse
from seekserve.api.cancellation import json_response
from seekserve.api.generation import Generation, build_sampling_params
from seekserve.api.protocol import CompletionRequest, parse_completion_request
from seekserve.api.sse import DONE, error_event, event, sse_response
from seekserve.api.state import AuthDep, StateDep
from seekserve.errors import EngineError, InvalidRequest
from seekserve.output.processor import TextDelta
from seekserve.prompt.fim import NoFimTokens, fim_prompt

router = APIRouter(dependencies=[AuthDep])

COMPLETIONS_NEED_BETA = (
    "completions api is only available when using beta api "
    '(set base_url="https://api.deepseek.com/beta")'
)
MAX_FIM_OUTPUT_TOKENS = 4096  # DeepSeek: "FIM max completion is 4K"


@router.post("/completions")
@router.post("/v1/completions")
async def completions() -> None:
    raise InvalidRequest(COMPLETIONS_NEED_BETA)


@router.post("/beta/completions")
async def beta_completions(request: Request, state: StateDep) -> Response:
    req = parse_completion_request(await request.body())
    served = state.model(req.model)
    if served.config.is_reasoning:  # spec §2.3: FIM is non-thinking only
        raise InvalidRequest(
            f"Invalid model value: {served.name} is a thinking model, which does not support "
            "FIM completion; use a non-thinking model such as deepseek-chat",
            param="model",
        )
    try:
        text = fim_prompt(served.tokenizer, req.prompt, req.suffix)
    except NoFimTokens:
        raise InvalidRequest(
            f"Invalid suffix value: model {served.name} has no fill-in-the-middle tokens; "
            "omit suffix for a plain completion, or serve a FIM model (e.g. "
            "qwen2.5-coder-0.5b)",
            param="suffix",
        ) from None
    prompt_token_ids = served.tokenizer.encode(text)
    params = build_sampling_params(
        req,
        served,
        len(prompt_token_ids),
        max_output_tokens=MAX_FIM_OUTPUT_TOKENS,
        logprobs=req.logprobs,
    )
    assert state.accounts is not None
    release = state.accounts.admit(request)  # 402 / 429
    try:
        gen = Generation.start(state, request, served, req, prompt_token_ids, params)
        header = gen.header("text_completion")
        shape = _Shape(gen, req, state.config.system_fingerprint)
        if req.stream:
            response: Response = sse_response(_stream(gen, header, shape, req.include_usage))
        else:
            response = await json_response(
                request, _collect(gen, header, shape), state.config.keepalive_interval_s
            )
    except BaseException:
        release()
        raise
    return ReleasingResponse(response, release)


class _Shape:
    """The `text_completion` wire shape: text (with `echo`) and its logprobs arrays."""

    def __init__(self, gen: Generation, req: CompletionRequest, fingerprint: str) -> None:
        self.gen = gen
        self.fingerprint = fingerprint
        self.with_logprobs = req.logprobs is not None
        self.offset = len(req.prompt) if req.echo else 0
        self.echo = req.prompt if req.echo else ""

    def logprobs(self, delta: TextDelta) -> dict[str, Any] | None:
        if not self.with_logprobs:
            return None
        tokens, token_logprobs, top, offsets = [], [], [], []
        for entry in self.gen.logprob_entries(delta):
            tokens.append(entry["token"])
            token_logprobs.append(entry["logprob"])
            alternatives = {t["token"]: t["logprob"] for t in entry["top_logprobs"]}
            alternatives.setdefault(entry["token"], entry["logprob"])  # up to logprobs + 1
            top.append(alternatives)
            offsets.append(self.offset)
            self.offset += len(entry["token"])
        return {
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": top,
        }

    def choice(self, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [],
                               "top_logprobs": []}  # fmt: skip
    for part in parts:
        for key, values in part.items():
            merged[key].extend(values)
    return merged


async def _collect(gen: Generation, header: dict[str, Any], shape: _Shape) -> dict[str, Any]:
    pieces, logprobs = [shape.echo], []
    async for delta in gen.deltas():
        pieces.append(delta.text)
        if (part := shape.logprobs(delta)) is not None:
            logprobs.append(part)
    choice = shape.choice(
        "".join(pieces), _merge(logprobs) if shape.with_logprobs else None, gen.finish_reason
    )
    return {
        **header,
        "choices": [choice],
        "usage": gen.usage(),
        "system_fingerprint": shape.fingerprint,
    }


async def _stream(
    gen: Generation, header: dict[str, Any], shape: _Shape, include_usage: bool
) -> AsyncIterator[str]:
    base = {**header, "system_fingerprint": shape.fingerprint}

    def chunk(text: str, logprobs: Any, finish_reason: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {**base, "choices": [shape.choice(text, logprobs, finish_reason)]}
        if include_usage:
            obj["usage"] = None
        return obj

    if shape.echo:
        yield event(chunk(shape.echo, None))
    try:
        async for delta in gen.deltas():
            logprobs = shape.logprobs(delta)
            if delta.finish_reason is None:
                if delta.text or (logprobs and logprobs["tokens"]):
                    yield event(chunk(delta.text, logprobs))
                continue
            last = chunk(delta.text, logprobs, delta.finish_reason)
            last["usage"] = gen.usage()
            yield event(last)
    except EngineError as exc:
        yield error_event(exc)
    yield DONE
