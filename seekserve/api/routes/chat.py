"""`POST /chat/completions` (also under /v1 and /beta): JSON or SSE (spec §3, §4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from seekserve.api.cancellation import run_until_disconnected
from seekserve.api.generation import Generation, build_sampling_params
from seekserve.api.protocol import (
    ChatCompletionRequest,
    check_supported,
    parse_chat_request,
    template_messages,
)
from seekserve.api.sse import (
    DONE,
    KEEPALIVE,
    error_event,
    event,
    sse_response,
    with_keepalive,
)
from seekserve.api.state import AuthDep, ServedModel, StateDep
from seekserve.errors import EngineError, InvalidRequest
from seekserve.prompt.chat_template import ChatTemplateError
from seekserve.sampling_params import SamplingParams

router = APIRouter(dependencies=[AuthDep])


@router.post("/chat/completions")
@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: StateDep) -> Response:
    return await _chat(request, state, is_beta=False)


@router.post("/beta/chat/completions")
async def beta_chat_completions(request: Request, state: StateDep) -> Response:
    return await _chat(request, state, is_beta=True)


async def _chat(request: Request, state: StateDep, is_beta: bool) -> Response:
    req = parse_chat_request(await request.body())
    served = state.model(req.model)
    check_supported(req, is_beta)
    prompt_token_ids = _render_prompt(served, req)
    params = to_sampling_params(req, served, len(prompt_token_ids))
    generation = Generation.start(state, request, served, req, prompt_token_ids, params)
    header = generation.header("chat.completion")
    fingerprint = state.config.system_fingerprint
    with_logprobs = bool(req.logprobs)
    if req.stream:
        return sse_response(
            _stream(
                generation,
                header,
                fingerprint,
                req.include_usage,
                with_logprobs,
                state.config.keepalive_interval_s,
            )
        )
    body = await run_until_disconnected(
        request, _collect(generation, header, fingerprint, with_logprobs)
    )
    if body is None:  # client gone; nobody reads this
        return Response(status_code=499)
    return JSONResponse(body)


def _render_prompt(served: ServedModel, req: ChatCompletionRequest) -> list[int]:
    try:
        text = served.chat_template.render(template_messages(req), add_generation_prompt=True)
    except ChatTemplateError as exc:
        raise InvalidRequest(f"Invalid messages value: {exc}", param="messages") from None
    # chat prefix completion: the reply continues this text, which is not repeated in it
    return served.tokenizer.encode(text + (req.assistant_prefix or ""))


def to_sampling_params(
    req: ChatCompletionRequest, served: ServedModel, num_prompt_tokens: int
) -> SamplingParams:
    json_mode = req.response_format is not None and req.response_format.type == "json_object"
    return build_sampling_params(
        req,
        served,
        num_prompt_tokens,
        max_output_tokens=served.config.max_output_tokens,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        response_format="json_object" if json_mode else None,
    )


async def _collect(
    gen: Generation, header: dict[str, Any], fingerprint: str, with_logprobs: bool
) -> dict[str, Any]:
    pieces: list[str] = []
    entries: list[dict[str, Any]] = []
    async for delta in gen.deltas():
        pieces.append(delta.text)
        entries.extend(gen.logprob_entries(delta))
    text = "".join(pieces)
    return {
        **header,
        "choices": [
            {
                "index": 0,
                # every field of the seed's message schema, as vLLM also sends them
                "message": {
                    "role": "assistant",
                    "content": text,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": {"content": entries} if with_logprobs else None,
                "finish_reason": gen.finish_reason,
            }
        ],
        "usage": gen.usage(),
        "system_fingerprint": fingerprint,
    }


async def _stream(
    gen: Generation,
    header: dict[str, Any],
    fingerprint: str,
    include_usage: bool,
    with_logprobs: bool,
    keepalive_interval_s: float,
) -> AsyncIterator[str]:
    base = {**header, "object": "chat.completion.chunk", "system_fingerprint": fingerprint}
    # logprobs of tokens whose text is still held back ride on the next chunk sent
    pending: list[dict[str, Any]] = []

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        logprobs = None
        if with_logprobs and (pending or finish_reason is not None):
            logprobs = {"content": pending[:]}
            pending.clear()
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        obj: dict[str, Any] = {**base, "choices": [choice]}
        if include_usage:
            obj["usage"] = None  # null on every chunk but the last (spec §4.4)
        return obj

    yield event(chunk({"role": "assistant", "content": ""}))
    try:
        async for delta in with_keepalive(gen.deltas(), keepalive_interval_s):
            if delta is None:  # silent for a while (queued or a long prefill)
                yield KEEPALIVE
                continue
            pending.extend(gen.logprob_entries(delta))
            if delta.text:
                yield event(chunk({"content": delta.text}))
            if delta.finish_reason is not None:
                last = chunk({"content": ""}, delta.finish_reason)
                last["usage"] = gen.usage()
                yield event(last)
    except EngineError as exc:
        yield error_event(exc)
    yield DONE
