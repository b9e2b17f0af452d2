"""A real uvicorn server on 127.0.0.1: the official `openai` SDK as a client, and clients
that go away mid-request (the engine request is aborted and its KV blocks freed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.engine.request import Request
from tests.api.helpers import CHAT, MODEL, chat_body, wait_until_idle
from tests.api.live import LiveServer, live_server
from tests.conftest import engine_config

NUM_TOKENS = 12


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir: Path) -> Iterator[LiveServer]:
    app = create_app(ServerConfig(), [engine_config(tiny_chat_model_dir, num_blocks=256)])
    with live_server(app) as live:
        yield live


@pytest.fixture(scope="module")
def sdk(server: LiveServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-unused", max_retries=0)
    yield client
    client.close()


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "Hi"}]


# -- the openai SDK --------------------------------------------------------------------------


def test_sdk_non_stream(sdk):
    completion = sdk.chat.completions.create(
        model=MODEL, messages=_messages(), temperature=0, max_tokens=NUM_TOKENS
    )
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint == "fp_seekserve"
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.logprobs is None
    usage = completion.usage
    assert usage.completion_tokens == NUM_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + NUM_TOKENS
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    # DeepSeek's own usage fields reach the SDK as extras
    assert usage.model_extra == {
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": usage.prompt_tokens,
    }


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_stream_equals_non_stream(sdk, include_usage):
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": _messages(),
        "temperature": 0,
        "max_tokens": NUM_TOKENS,
    }
    completion = sdk.chat.completions.create(**kwargs)
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    chunks = list(sdk.chat.completions.create(stream=True, **kwargs))
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == completion.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "length"]
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].usage == completion.usage


def test_sdk_models_list(sdk):
    models = list(sdk.models.list())
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL, "model", "deepseek")]


def test_sdk_bad_request(server, sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=_messages(), n=2)
    error = caught.value
    assert error.status_code == 400
    assert error.body == {
        "message": "Invalid n value (currently only n = 1 is supported)",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request_error",
    }
    assert (error.code, error.type, error.param) == ("invalid_request_error",) * 2 + (None,)
    with pytest.raises(openai.BadRequestError, match="Model Not Exist"):
        sdk.chat.completions.create(model="deepseek-coder", messages=_messages())
    _assert_still_serving(server)


def test_sdk_unprocessable(server, sdk):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=_messages(), temperature="1.3")
    assert caught.value.status_code == 422
    assert caught.value.body["message"] == (
        "Failed to deserialize the JSON body into the target type: temperature: invalid type: "
        'string "1.3", expected a number'
    )
    _assert_still_serving(server)


def test_sdk_stream_error_before_the_stream(server, sdk):
    with pytest.raises(openai.BadRequestError, match="Invalid max_tokens value"):
        sdk.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=0, stream=True)
    _assert_still_serving(server)


def test_sdk_concurrent_requests_match_solo_runs(sdk):
    """Requests batched together answer as they do alone (greedy)."""
    prompts = ["Hi", "Hello there", "What is 2 + 2?", "Name a color."]

    def ask(prompt: str, stream: bool = False) -> str:
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": NUM_TOKENS,
        }
        if stream:
            chunks = sdk.chat.completions.create(stream=True, **kwargs)
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        return sdk.chat.completions.create(**kwargs).choices[0].message.content

    solo = [ask(prompt) for prompt in prompts]
    with ThreadPoolExecutor(max_workers=2 * len(prompts)) as pool:
        batched = list(pool.map(ask, prompts + prompts, [False] * len(prompts) + [True] * 4))
    assert batched == solo + solo


# -- clients that go away ----------------------------------------------------------------------


@pytest.fixture
def slow_steps(server):
    """Every engine step takes at least 5 ms, so a long request outlasts any scheduling
    hiccup of the client thread (client, server and engine share one process and its GIL)."""
    engine = server.engine
    step = engine.step

    def slow_step():
        time.sleep(0.005)
        return step()

    engine.step = slow_step
    yield
    del engine.step


def _long_body(server: LiveServer, **fields: Any) -> dict[str, Any]:
    """A request that would run to the end of the context (~1000 tokens, seconds on CPU)."""
    return chat_body(max_tokens=server.engine.max_model_len - 31, ignore_eos=True, **fields)


def _assert_aborted(server: LiveServer, request: Request) -> None:
    wait_until_idle(server.engine, timeout_s=5.0)
    assert request.finish_reason == "abort"
    assert 0 < request.num_output_tokens < request.sampling_params.max_tokens


def _assert_still_serving(server: LiveServer) -> None:
    response = httpx.post(f"{server.base_url}{CHAT}", json=chat_body(max_tokens=2), timeout=10)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2
    wait_until_idle(server.engine)


def test_stream_client_disconnect_aborts_the_request(server, slow_steps):
    with (
        httpx.Client(base_url=server.base_url, timeout=10) as http,
        http.stream("POST", CHAT, json=_long_body(server, stream=True)) as response,
    ):
        assert response.status_code == 200
        events = []
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 3:  # the role chunk and two content chunks
                break
        request = server.engine.scheduler.requests.get(events[0]["id"])
        assert request is not None, f"the request finished before the client left: {events}"
    _assert_aborted(server, request)
    _assert_still_serving(server)


def test_non_stream_client_timeout_aborts_the_request(server, slow_steps):
    seen: list[Request] = []
    done = threading.Event()

    def watch() -> None:  # the request id is not known to a non-stream client before the end
        while not done.is_set() and not seen:
            seen.extend(list(server.engine.scheduler.requests.values()))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.base_url}{CHAT}",
                json=_long_body(server),
                timeout=httpx.Timeout(10, read=0.5),
            )
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 1
    _assert_aborted(server, seen[0])
    _assert_still_serving(server)


def test_sdk_stream_closed_early_aborts_the_request(server, sdk, slow_steps):
    body = _long_body(server)
    stream = sdk.chat.completions.create(
        stream=True, extra_body={"ignore_eos": body.pop("ignore_eos")}, **body
    )
    chunks = [next(stream), next(stream), next(stream)]
    request = server.engine.scheduler.requests.get(chunks[0].id)
    assert request is not None
    stream.close()
    _assert_aborted(server, request)
    _assert_still_serving(server)
