"""`POST /chat/completions` (also under /v1 and /beta): JSON or SSE (spec §3, §4)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from seekserve.api import chat_response
from seekserve.api.accounts import ReleasingResponse
from seekserve.api.cancellation import json_response
from seekserve.api.chat_plan import plan_chat
from seekserve.api.generation import Generation, build_sampling_params
from seekserve.api.protocol import ChatCompletionRequest, check_supported, parse_chat_request
from seekserve.api.sse import sse_response
from seekserve.api.state import AuthDep, ServedModel, ServerState, StateDep
from seekserve.sampling_params import GrammarSpec, SamplingParams

router = APIRouter(dependencies=[AuthDep])

# what a thinking model ignores (spec §2.3): its sampling is the server's, not the request's
_IGNORED_BY_REASONER = {
    "temperature": None,
    "top_p": None,
    "frequency_penalty": None,
    "presence_penalty": None,
}


@router.post("/chat/completions")
@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: StateDep) -> Response:
    return await _chat(request, state, is_beta=False)


@router.post("/beta/chat/completions")
async def beta_chat_completions(request: Request, state: StateDep) -> Response:
    return await _chat(request, state, is_beta=True)


async def _chat(request: Request, state: StateDep, is_beta: bool) -> Response:
    req = parse_chat_request(await request.body())
    served = _served_model(state, req)
    check_supported(req, is_beta, served.config.is_reasoning)
    assert state.accounts is not None
    release = state.accounts.admit(request)  # 402 / 429
    try:
        response = await _respond(request, state, req, served, is_beta)
    except BaseException:
        release()
        raise
    return ReleasingResponse(response, release)


async def _respond(
    request: Request,
    state: ServerState,
    req: ChatCompletionRequest,
    served: ServedModel,
    is_beta: bool,
) -> Response:
    plan = await plan_chat(req, served, is_beta)
    params = to_sampling_params(req, served, len(plan.prompt_token_ids), plan.grammar)
    generation = Generation.start(state, request, served, req, plan.prompt_token_ids, params)
    header = generation.header("chat.completion")
    fingerprint = state.config.system_fingerprint
    with_logprobs = bool(req.logprobs)
    if req.stream:
        return sse_response(
            chat_response.stream(
                generation,
                plan,
                header,
                fingerprint,
                req.include_usage,
                with_logprobs,
                state.config.keepalive_interval_s,
            )
        )
    return await json_response(
        request,
        chat_response.collect(generation, plan, header, fingerprint, with_logprobs),
        state.config.keepalive_interval_s,
    )


def _served_model(state: ServerState, req: ChatCompletionRequest) -> ServedModel:
    """The model named, or the one `thinking` switches to (spec §2.2: `thinking: enabled` on
    deepseek-chat is deepseek-reasoner)."""
    served = state.model(req.model)
    if req.thinking is None:
        return served
    wants_thinking = req.thinking.type == "enabled"
    if wants_thinking == served.config.is_reasoning:
        return served
    if wants_thinking:
        return state.thinking_model()
    return state.non_thinking_model() or served


def to_sampling_params(
    req: ChatCompletionRequest,
    served: ServedModel,
    num_prompt_tokens: int,
    grammar: GrammarSpec | None,
) -> SamplingParams:
    if served.config.is_reasoning:
        req = req.model_copy(update=_IGNORED_BY_REASONER)
    return build_sampling_params(
        req,
        served,
        num_prompt_tokens,
        max_output_tokens=served.config.output_tokens_limit,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        grammar=grammar,
    )
