"""`POST /anthropic/v1/messages` (spec §11): an Anthropic Messages request translated into a
chat request (`api/anthropic.py`), run through the chat pipeline, shaped as Anthropic's
message or SSE stream (`api/anthropic_response.py`). Claude Code and the anthropic SDK use it
with `base_url=<server>/anthropic`."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from seekserve.api import anthropic_response
from seekserve.api.accounts import ReleasingResponse
from seekserve.api.anthropic import MessagesRequest, parse_messages_request, to_chat_request
from seekserve.api.cancellation import json_response
from seekserve.api.chat_plan import plan_chat
from seekserve.api.generation import Generation
from seekserve.api.protocol import ChatCompletionRequest, check_supported, parse_json_object
from seekserve.api.routes.chat import to_sampling_params
from seekserve.api.sse import sse_response
from seekserve.api.state import AuthDep, ServedModel, ServerState, StateDep

router = APIRouter(dependencies=[AuthDep])

# NOTE: a trailing assistant message is a prefill (Anthropic's rule), which the chat
# pipeline serves as a prefix completion, a /beta feature there; strict tools, the other
# beta feature, cannot be asked for in an Anthropic request.
_IS_BETA = True


@router.post("/anthropic/v1/messages")
async def messages(request: Request, state: StateDep) -> Response:
    anthropic_req = parse_messages_request(await request.body())
    served = served_model(state, anthropic_req)
    req = to_chat_request(anthropic_req, served.name)
    check_supported(req, _IS_BETA, served.config.is_reasoning)
    assert state.accounts is not None
    release = state.accounts.admit(request)  # 402 / 429
    try:
        response = await _respond(request, state, req, served)
    except BaseException:
        release()
        raise
    return ReleasingResponse(response, release)


async def _respond(
    request: Request, state: ServerState, req: ChatCompletionRequest, served: ServedModel
) -> Response:
    plan = await plan_chat(req, served, _IS_BETA)
    num_prompt_tokens = len(plan.prompt_token_ids)
    req = req.model_copy(update={"max_tokens": _max_tokens(req, served, num_prompt_tokens)})
    params = to_sampling_params(req, served, num_prompt_tokens, plan.grammar)
    generation = Generation.start(state, request, served, req, plan.prompt_token_ids, params)
    keepalive_s = state.config.keepalive_interval_s
    if req.stream:
        return sse_response(anthropic_response.stream(generation, plan, keepalive_s))
    return await json_response(request, anthropic_response.collect(generation, plan), keepalive_s)


@router.post("/anthropic/v1/messages/count_tokens")
async def count_tokens(request: Request, state: StateDep) -> dict[str, int]:
    """The prompt's size as this server would render it (Claude Code asks before sending);
    the body is a Messages request without `max_tokens`."""
    payload = parse_json_object(await request.body(), "CountTokensRequest")
    payload.setdefault("max_tokens", 1)
    anthropic_req = parse_messages_request(json.dumps(payload).encode())
    served = served_model(state, anthropic_req)
    req = to_chat_request(anthropic_req, served.name)
    check_supported(req, _IS_BETA, served.config.is_reasoning)
    plan = await plan_chat(req, served, _IS_BETA)
    return {"input_tokens": len(plan.prompt_token_ids)}


def _max_tokens(req: ChatCompletionRequest, served: ServedModel, num_prompt_tokens: int) -> int:
    """NOTE: `max_tokens` is required in Anthropic's API and clients size it for Claude
    (Claude Code sends 32000), so it is capped at the model's output limit and the context
    left, not refused; a prompt that fills the context is still the context-length 400."""
    assert req.max_tokens is not None
    room = served.max_model_len - num_prompt_tokens
    return max(1, min(req.max_tokens, served.config.output_tokens_limit, room))


def served_model(state: ServerState, req: MessagesRequest) -> ServedModel:
    """A served name as is; any other name (claude-sonnet-4-5, ...) is deepseek-chat, or the
    first non-thinking model (spec §11). `thinking` then switches as on /chat/completions:
    enabled → the thinking model (400 when none), adaptive → it when served, disabled → a
    non-thinking model."""
    served = state.models.get(req.model) or _default_model(state)
    thinking = req.thinking.type if req.thinking is not None else None
    is_reasoning = served.config.is_reasoning
    if thinking == "enabled" and not is_reasoning:
        return state.thinking_model()
    if thinking == "adaptive" and not is_reasoning:
        return next((s for s in state.models.values() if s.config.is_reasoning), served)
    if thinking == "disabled" and is_reasoning:
        return state.non_thinking_model() or served
    return served


def _default_model(state: ServerState) -> ServedModel:
    if "deepseek-chat" in state.models:
        return state.models["deepseek-chat"]
    return state.non_thinking_model() or next(iter(state.models.values()))
