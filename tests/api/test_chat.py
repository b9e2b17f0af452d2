"""POST /chat/completions answers (spec §3, §4, §6) and GET /models (§9), /health."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.api.helpers import (
    CHAT,
    MODEL,
    assert_error,
    assert_still_serving,
    chat_body,
    engine_of,
    sse_events,
    wait_until_idle,
)

NUM_TOKENS = 16
NUM_PROMPT_TOKENS = 31  # "Hi" in SmolLM2's chat template (with its default system prompt)
USAGE_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
]


def _usage(num_prompt: int, num_completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_completion,
        "total_tokens": num_prompt + num_completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": num_prompt,
    }


@pytest.fixture(scope="module")
def greedy(client) -> dict[str, Any]:
    """The non-stream greedy answer to `chat_body(max_tokens=16)`."""
    response = client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def greedy_chunks(client) -> list[dict[str, Any]]:
    """The streamed greedy answer to the same request."""
    return sse_events(client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS, stream=True)))


def _content_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chunks between the role chunk and the finish chunk."""
    return chunks[1:-1]


# -- non-stream ------------------------------------------------------------------------------


def test_response_shape(client, greedy):
    before = int(time.time())
    body = client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS)).json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    ]
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["id"] != greedy["id"]
    assert body["object"] == "chat.completion"
    assert before <= body["created"] <= int(time.time())
    assert body["model"] == MODEL
    assert body["system_fingerprint"] == "fp_seekserve"
    content = body["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": content,
                "reasoning_content": None,
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert list(body["choices"][0]) == ["index", "message", "logprobs", "finish_reason"]
    usage = body["usage"]
    assert list(usage) == USAGE_KEYS
    assert usage == _usage(NUM_PROMPT_TOKENS, NUM_TOKENS)
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == (usage["prompt_tokens"])
    )
    assert_still_serving(client)


def test_response_headers(client):
    response = client.post(CHAT, json=chat_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


def test_greedy_is_deterministic(client, greedy):
    again = client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS)).json()
    assert again["choices"] == greedy["choices"]
    assert again["usage"] == greedy["usage"]


def test_max_tokens_one(client, greedy, greedy_chunks):
    body = client.post(CHAT, json=chat_body(max_tokens=1)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == _usage(NUM_PROMPT_TOKENS, 1)
    first_token_text = _content_chunks(greedy_chunks)[0]["choices"][0]["delta"]["content"]
    assert body["choices"][0]["message"]["content"] == first_token_text
    assert greedy["choices"][0]["message"]["content"].startswith(first_token_text)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/beta/chat/completions"])
def test_every_base_url_serves_the_same(client, greedy, path):
    body = client.post(path, json=chat_body(max_tokens=NUM_TOKENS)).json()
    assert body["choices"] == greedy["choices"]
    assert body["usage"] == greedy["usage"]
    chunks = sse_events(client.post(path, json=chat_body(max_tokens=NUM_TOKENS, stream=True)))
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == greedy["choices"][0]["message"]["content"]


def test_system_prompt_changes_the_prompt(client, greedy):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    body = client.post(CHAT, json=chat_body(messages=messages)).json()
    assert body["usage"]["prompt_tokens"] != greedy["usage"]["prompt_tokens"]


# -- stream ------------------------------------------------------------------------------------


def test_stream_equals_non_stream(greedy, greedy_chunks):
    text = "".join(c["choices"][0]["delta"]["content"] for c in greedy_chunks)
    assert text == greedy["choices"][0]["message"]["content"]
    last = greedy_chunks[-1]
    assert last["choices"][0]["finish_reason"] == greedy["choices"][0]["finish_reason"]
    assert last["usage"] == greedy["usage"]
    assert list(last["usage"]) == USAGE_KEYS


def test_stream_chunks(greedy_chunks):
    first, last = greedy_chunks[0], greedy_chunks[-1]
    assert str(uuid.UUID(first["id"])) == first["id"]
    header = {
        "id": first["id"],
        "object": "chat.completion.chunk",
        "created": first["created"],
        "model": MODEL,
        "system_fingerprint": "fp_seekserve",
    }
    assert first == {
        **header,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    content = _content_chunks(greedy_chunks)
    # the tiny model's tokens each decode to text: one chunk per token
    assert len(content) == NUM_TOKENS
    for chunk in content:
        text = chunk["choices"][0]["delta"]["content"]
        assert text
        assert chunk == {
            **header,
            "choices": [
                {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
            ],
        }
        assert list(chunk) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert last == {
        **header,
        "choices": [
            {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": _usage(NUM_PROMPT_TOKENS, NUM_TOKENS),
    }
    assert list(last) == [
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "choices",
        "usage",
    ]


@pytest.mark.parametrize(
    "stream_options", [None, {}, {"include_usage": False}, {"include_usage": None}]
)
def test_stream_usage_only_on_last_chunk(client, greedy_chunks, stream_options):
    fields: dict[str, Any] = {"max_tokens": NUM_TOKENS, "stream": True}
    if stream_options is not None:
        fields["stream_options"] = stream_options
    chunks = sse_events(client.post(CHAT, json=chat_body(**fields)))
    assert [("usage" in c) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["usage"] == _usage(NUM_PROMPT_TOKENS, NUM_TOKENS)
    assert [c["choices"] for c in chunks] == [c["choices"] for c in greedy_chunks]


def test_stream_include_usage(client, greedy_chunks):
    body = chat_body(max_tokens=NUM_TOKENS, stream=True, stream_options={"include_usage": True})
    chunks = sse_events(client.post(CHAT, json=body))
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["usage"] == _usage(NUM_PROMPT_TOKENS, NUM_TOKENS)
    for chunk in chunks:
        assert list(chunk)[-1] == "usage"
    # never a separate usage-only chunk: the last chunk is the finish chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert [c["choices"] for c in chunks] == [c["choices"] for c in greedy_chunks]


def test_stream_max_tokens_one(client):
    chunks = sse_events(client.post(CHAT, json=chat_body(max_tokens=1, stream=True)))
    assert len(chunks) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 1


# -- stop strings ---------------------------------------------------------------------------


def _stop_string(greedy_chunks: list[dict[str, Any]]) -> tuple[str, str, int]:
    """A stop string from the middle of the greedy output: (stop, text before it, number of
    tokens up to the one that completes it). The stop is the whole text of one token whose
    first occurrence is that token."""
    texts = [c["choices"][0]["delta"]["content"] for c in _content_chunks(greedy_chunks)]
    full = "".join(texts)
    for index in range(len(texts) // 2, len(texts)):
        offset = len("".join(texts[:index]))
        stop = texts[index].strip()
        start = offset + texts[index].index(stop)
        if len(stop) >= 3 and full.find(stop) == start:
            return stop, full[:start], index + 1
    raise AssertionError(f"no usable stop string in {texts}")


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_string(client, greedy, greedy_chunks, as_list):
    stop, before, num_tokens = _stop_string(greedy_chunks)
    assert greedy["choices"][0]["message"]["content"].startswith(before + stop)
    stops = ["@@never@@", stop] if as_list else stop
    body = client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS, stop=stops)).json()
    assert body["choices"][0]["message"]["content"] == before
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == _usage(NUM_PROMPT_TOKENS, num_tokens)
    assert_still_serving(client)


def test_stop_string_in_stream(client, greedy_chunks):
    stop, before, num_tokens = _stop_string(greedy_chunks)
    body = chat_body(max_tokens=NUM_TOKENS, stop=[stop], stream=True)
    chunks = sse_events(client.post(CHAT, json=body))
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == before
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "stop"
    ]
    assert chunks[-1]["choices"][0]["delta"] == {"content": ""}
    assert chunks[-1]["usage"] == _usage(NUM_PROMPT_TOKENS, num_tokens)
    wait_until_idle(engine_of(client))
    assert_still_serving(client)


def test_stop_string_not_in_output_changes_nothing(client, greedy):
    body = client.post(CHAT, json=chat_body(max_tokens=NUM_TOKENS, stop=["@@never@@"])).json()
    assert body["choices"] == greedy["choices"]


# -- models, health --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/models", "/v1/models"])
def test_list_models(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "owned_by": "deepseek"}],
    }


@pytest.mark.parametrize("path", ["/models/deepseek-chat", "/v1/models/deepseek-chat"])
def test_get_model(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"id": MODEL, "object": "model", "owned_by": "deepseek"}


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": [MODEL]}


def test_cors_preflight_is_answered(client):
    response = client.options(
        "/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]


def test_every_response_has_a_trace_id(client):
    import re

    for response in (
        client.post("/chat/completions", json={"model": "deepseek-chat", "messages": [], "n": 1}),
        client.get("/models"),
        client.get("/no-such-path"),
    ):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-ds-trace-id"])


def test_max_completion_tokens_is_an_alias_of_max_tokens(client):
    """OpenAI's newer field (sent by LangChain's ChatOpenAI); max_tokens wins over it."""
    body = chat_body(max_tokens=None, max_completion_tokens=3, ignore_eos=True)
    del body["max_tokens"]
    assert client.post(CHAT, json=body).json()["usage"]["completion_tokens"] == 3
    both = chat_body(max_tokens=2, max_completion_tokens=5, ignore_eos=True)
    assert client.post(CHAT, json=both).json()["usage"]["completion_tokens"] == 2
    assert_error(
        client.post(CHAT, json={**body, "max_completion_tokens": 0}),
        400,
        "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]",
        "max_tokens",
    )
