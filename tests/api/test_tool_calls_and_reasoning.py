"""Tool calls and reasoning on the wire, exactly: a scripted model (tests/api/scripted_chat.py)
answers each prompt with a fixed token sequence, so every response body and every SSE chunk
is known in advance — markup split mid-tag, parallel calls, each tool_choice, think blocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.output.tool_calls import tool_call_id
from seekserve.prompt.tokenizer import Tokenizer
from tests.api.helpers import CHAT, assert_error, sse_events, wait_until_idle
from tests.api.scripted_chat import CHAT_SCRIPTS, REASONER_SCRIPTS, scripted_configs
from tests.scripted import encode_pieces

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
PARIS = '{"city": "Paris"}'


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


def num_tokens(tokenizer: Tokenizer, key: str, upto: str | None = None) -> int:
    """Tokens of a script's reply (up to and including the piece `upto`)."""
    pieces = {**CHAT_SCRIPTS, **REASONER_SCRIPTS}[key]
    if upto is not None:
        pieces = pieces[: pieces.index(upto) + 1]
    return len(encode_pieces(tokenizer, pieces))


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> list:
    return scripted_configs(tmp_path_factory.mktemp("scripted-chat"), tokenizer)


@pytest.fixture(scope="module")
def client(configs: list) -> Iterator[TestClient]:
    with TestClient(create_app(ServerConfig(), configs)) as test_client:
        yield test_client


def ask(client: TestClient, user: str, model: str = "deepseek-chat", **fields: Any) -> dict:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": user}],
        "tools": [WEATHER, TIME],
        "temperature": 0,
        "max_tokens": 100,
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def post(client: TestClient, body: dict, path: str = CHAT) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream(client: TestClient, body: dict, path: str = CHAT) -> list[tuple[dict, str | None]]:
    """(delta, finish_reason) of every chunk, after checking what all chunks share."""
    chunks = sse_events(client.post(path, json={**body, "stream": True}))
    first = chunks[0]
    for chunk in chunks:
        assert chunk["id"] == first["id"] and chunk["created"] == first["created"]
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == body["model"]
        assert chunk["system_fingerprint"] == first["system_fingerprint"]
        assert len(chunk["choices"]) == 1 and chunk["choices"][0]["index"] == 0
        assert chunk["choices"][0]["logprobs"] is None
        assert ("usage" in chunk) == (chunk is chunks[-1])  # usage rides on the last only
    return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]


def call(index: int, request_id: str, name: str, arguments: str) -> dict:
    return {
        "index": index,
        "id": tool_call_id(request_id, index),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def start(index: int, request_id: str, name: str) -> tuple[dict, None]:
    return {"tool_calls": [call(index, request_id, name, "")]}, None


def args(index: int, *pieces: str) -> list[tuple[dict, None]]:
    return [
        ({"tool_calls": [{"index": index, "function": {"arguments": p}}]}, None) for p in pieces
    ]


def stream_id(client: TestClient, body: dict) -> tuple[str, list[tuple[dict, str | None]]]:
    chunks = sse_events(client.post(CHAT, json={**body, "stream": True}))
    return chunks[0]["id"], stream(client, body)


def message(body: dict) -> dict:
    return body["choices"][0]["message"]


# -- tool calls ------------------------------------------------------------------------------


def test_content_then_a_call(client, tokenizer):
    body = post(client, ask(client, "weather please"))
    rid = body["id"]
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": None,
                "tool_calls": [call(0, rid, "get_weather", PARIS)],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    # the script's tokens, then <|im_end|>
    assert body["usage"]["completion_tokens"] == num_tokens(tokenizer, "weather please") + 1


def test_content_chunks_are_encoded_exactly_as_json_encodes_them(client):
    """Quotes, a backslash, a tab, non-ASCII, a line separator and a control character in
    streamed content: each chunk's bytes are the compact JSON of its object (`sse_events`
    checks), and the text arrives whole."""
    body = {**ask(client, "escapes please", tools=None), "stream": True}
    chunks = sse_events(client.post(CHAT, json=body))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(CHAT_SCRIPTS["escapes please"])
    assert text == 'Say "hi" \\\tt\u00e9 \U0001f600\u2028\x01end'


def test_content_then_a_call_streamed(client, tokenizer):
    chunks = sse_events(client.post(CHAT, json={**ask(client, "weather please"), "stream": True}))
    rid = chunks[0]["id"]
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Let"}, None),
        ({"content": " me"}, None),
        ({"content": " check"}, None),
        ({"content": "."}, None),
        start(0, rid, "get_weather"),
        *args(0, '{"', "city", '":', " ", '"', "Paris", '"}'),
        ({"content": ""}, "tool_calls"),
    ]
    assert chunks[-1]["usage"]["completion_tokens"] == num_tokens(tokenizer, "weather please") + 1


def test_markup_split_mid_tag_never_leaks(client):
    body = post(client, ask(client, "split please"))
    assert message(body)["content"] is None
    assert message(body)["tool_calls"] == [call(0, body["id"], "get_weather", PARIS)]
    chunks = sse_events(client.post(CHAT, json={**ask(client, "split please"), "stream": True}))
    rid = chunks[0]["id"]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": ""}, None),
        start(0, rid, "get_weather"),
        *args(0, '{"', "ci", "ty", '":', ' "', "Par", "is", '"', "}"),
        ({"content": ""}, "tool_calls"),
    ]


def test_parallel_calls(client):
    body = post(client, ask(client, "parallel please"))
    rid = body["id"]
    assert message(body) == {
        "role": "assistant",
        "content": None,
        "reasoning_content": None,
        "tool_calls": [
            call(0, rid, "get_weather", PARIS),
            call(1, rid, "get_time", '{"zone": "CET"}'),
        ],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    chunks = sse_events(client.post(CHAT, json={**ask(client, "parallel please"), "stream": True}))
    rid = chunks[0]["id"]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": ""}, None),
        start(0, rid, "get_weather"),
        *args(0, '{"', "city", '":', " ", '"', "Paris", '"}'),
        start(1, rid, "get_time"),
        *args(1, '{"', "zone", '":', ' "', "C", "ET", '"}'),
        ({"content": ""}, "tool_calls"),
    ]


def test_tool_choice_none_leaves_markup_as_text(client):
    body = post(client, ask(client, "weather please", tool_choice="none"))
    assert message(body)["tool_calls"] == []
    assert message(body)["content"] == (
        'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>"
    )
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "choice",
    [None, "auto", "required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["default", "auto", "required", "named"],
)
def test_tool_choices_that_allow_the_scripted_call(client, tokenizer, choice):
    """The script's call passes every mode's grammar untouched: the same exact output."""
    body = post(client, ask(client, "split please", tool_choice=choice))
    assert message(body)["tool_calls"] == [call(0, body["id"], "get_weather", PARIS)]
    assert (message(body)["content"], body["choices"][0]["finish_reason"]) == (None, "tool_calls")
    named = isinstance(choice, dict)  # a named call ends where the grammar ends it
    expected = num_tokens(tokenizer, "split please") + (0 if named else 1)
    assert body["usage"]["completion_tokens"] == expected


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
    ids=["required", "named"],
)
def test_forced_choices_override_a_model_that_would_not_call(client, choice, names):
    """The script answers in prose; the grammar makes the first token a call anyway."""
    for body in (
        post(client, ask(client, "no call please", tool_choice=choice, max_tokens=80)),
        post(client, ask(client, "no call please", tool_choice=choice, max_tokens=80)),
    ):
        calls = message(body)["tool_calls"]
        assert message(body)["content"] is None
        assert len(calls) == 1 and calls[0]["function"]["name"] in names
        assert calls[0]["function"]["arguments"].startswith("{")


# -- reasoning -------------------------------------------------------------------------------


def test_reasoning_then_content(client, tokenizer):
    body = post(client, ask(client, "think please", model="deepseek-reasoner", tools=None))
    assert body["model"] == "deepseek-reasoner"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello!",
        "reasoning_content": "A greeting.",
        "tool_calls": [],
    }
    # the tokens up to "</think>" are reasoning; "\n\n", "Hello", "!" and eos are not
    usage = body["usage"]
    assert (usage["completion_tokens"], usage["completion_tokens_details"]) == (
        num_tokens(tokenizer, "think please") + 1,
        {"reasoning_tokens": num_tokens(tokenizer, "think please", upto="</think>")},
    )
    assert stream(client, ask(client, "think please", model="deepseek-reasoner", tools=None)) == [
        ({"role": "assistant", "content": None, "reasoning_content": ""}, None),
        ({"content": None, "reasoning_content": "A"}, None),
        ({"content": None, "reasoning_content": " greeting"}, None),
        ({"content": None, "reasoning_content": "."}, None),
        ({"content": "Hello", "reasoning_content": None}, None),
        ({"content": "!", "reasoning_content": None}, None),
        ({"content": "", "reasoning_content": None}, "stop"),
    ]


def test_reasoning_then_a_tool_call(client):
    body = post(client, ask(client, "think then call", model="deepseek-reasoner"))
    assert message(body) == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Need weather.",
        "tool_calls": [call(0, body["id"], "get_weather", PARIS)],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    chunks = sse_events(
        client.post(
            CHAT, json={**ask(client, "think then call", model="deepseek-reasoner"), "stream": True}
        )
    )
    rid = chunks[0]["id"]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": None, "reasoning_content": ""}, None),
        ({"content": None, "reasoning_content": "Need"}, None),
        ({"content": None, "reasoning_content": " weather"}, None),
        ({"content": None, "reasoning_content": "."}, None),
        start(0, rid, "get_weather"),
        *args(0, '{"', "city", '":', " ", '"', "Paris", '"}'),
        ({"content": "", "reasoning_content": None}, "tool_calls"),
    ]


def test_stop_string_inside_reasoning_ends_the_request(client):
    request = ask(client, "think stop", model="deepseek-reasoner", tools=None, stop=["STOP"])
    body = post(client, request)
    assert message(body)["reasoning_content"] == "One"
    assert message(body)["content"] == ""
    assert body["choices"][0]["finish_reason"] == "stop"
    assert stream(client, request) == [
        ({"role": "assistant", "content": None, "reasoning_content": ""}, None),
        ({"content": None, "reasoning_content": "One"}, None),
        ({"content": "", "reasoning_content": None}, "stop"),
    ]


def test_json_mode_after_thinking(client):
    request = ask(
        client,
        "think json",
        model="deepseek-reasoner",
        tools=None,
        response_format={"type": "json_object"},
        messages=[
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "think json"},
        ],
    )
    body = post(client, request)
    assert (message(body)["reasoning_content"], message(body)["content"]) == ("Plan.", '{"a": 1}')
    assert json.loads(message(body)["content"]) == {"a": 1}


def test_reasoner_ignores_sampling_and_rejects_logprobs(client):
    base = ask(client, "think please", model="deepseek-reasoner", tools=None)
    ignored = post(client, {**base, "temperature": 2.0, "top_p": 0.01, "presence_penalty": 2})
    assert message(ignored)["content"] == "Hello!"
    for extra in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 2}):
        assert_error(
            client.post(CHAT, json={**base, **extra}),
            400,
            "deepseek-reasoner does not support the parameter `logprobs`",
            "logprobs",
        )
    assert message(post(client, {**base, "logprobs": False}))["content"] == "Hello!"


def test_thinking_switch_selects_the_reasoner(client):
    body = post(client, ask(client, "think please", tools=None, thinking={"type": "enabled"}))
    assert body["model"] == "deepseek-reasoner"
    assert message(body)["reasoning_content"] == "A greeting."
    disabled = ask(
        client, "weather please", model="deepseek-reasoner", thinking={"type": "disabled"}
    )
    body = post(client, disabled)
    assert body["model"] == "deepseek-chat"
    assert message(body)["tool_calls"][0]["function"]["name"] == "get_weather"


def test_reasoning_content_in_history_stays_out_of_the_prompt(client):
    """An earlier turn's reasoning_content is accepted and not rendered: the prompt (and
    so prompt_tokens) is the same with or without it."""
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "A long thought " * 20},
        {"role": "user", "content": "think please"},
    ]
    with_rc = post(client, ask(client, "", model="deepseek-reasoner", tools=None, messages=turns))
    turns[1] = {"role": "assistant", "content": "Hello!"}
    without = post(client, ask(client, "", model="deepseek-reasoner", tools=None, messages=turns))
    assert with_rc["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"]
    assert message(with_rc)["content"] == "Hello!"


def test_reasoner_prefix_completion_continues_the_thought(client):
    """Beta prefix with reasoning_content: the prompt continues the think block; the reply
    holds only what comes after the prefix."""
    request = ask(
        client,
        "",
        model="deepseek-reasoner",
        tools=None,
        messages=[
            {"role": "user", "content": "think please"},
            {"role": "assistant", "content": "", "reasoning_content": "So,", "prefix": True},
        ],
    )
    body = post(client, request, path="/beta/chat/completions")
    assert message(body)["reasoning_content"] == "A greeting."
    assert message(body)["content"] == "Hello!"


def test_tool_history_renders_with_a_template_without_tool_support(client, tokenizer):
    """SmolLM2's template fails on `content: null` and knows no tools: the history reaches
    it as text (calls as markup, results as a user turn), the request succeeds."""
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_00_x",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": PARIS},
                }
            ],
        },
        {"role": "tool", "content": "18 C", "tool_call_id": "call_00_x"},
        {"role": "user", "content": "weather please"},
    ]
    body = post(client, ask(client, "", messages=history))
    assert message(body)["tool_calls"][0]["function"]["arguments"] == PARIS
    from seekserve.output.tool_calls import HERMES
    from seekserve.prompt.tools import render_chat

    served = client.app.state.seekserve.models["deepseek-chat"]
    flat = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": history[1]["tool_calls"]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_00_x"},
        {"role": "user", "content": "weather please"},
    ]
    prompt = render_chat(served.chat_template, flat, [WEATHER, TIME], HERMES)
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt))
    assert "<tool_response>\n18 C\n</tool_response>" in prompt


def test_openai_sdk_parses_reasoning_and_tool_call_shapes(configs, tokenizer):
    """The official SDK over a live server: reasoning_content (an extra field to it) and
    tool calls, non-stream and streamed."""
    import openai

    from tests.api.live import live_server

    with live_server(create_app(ServerConfig(), configs)) as live:
        sdk = openai.OpenAI(base_url=live.base_url, api_key="sk-unused", max_retries=0)
        out = sdk.chat.completions.create(
            model="deepseek-reasoner",
            messages=[{"role": "user", "content": "think then call"}],
            tools=[WEATHER, TIME],
        )
        msg = out.choices[0].message
        assert msg.model_extra["reasoning_content"] == "Need weather."
        assert msg.tool_calls[0].function.arguments == PARIS
        assert out.usage.completion_tokens_details.reasoning_tokens == num_tokens(
            tokenizer, "think then call", upto="</think>"
        )
        reasoning, arguments = [], []
        for chunk in sdk.chat.completions.create(
            model="deepseek-reasoner",
            messages=[{"role": "user", "content": "think then call"}],
            tools=[WEATHER, TIME],
            stream=True,
        ):
            delta = chunk.choices[0].delta
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            arguments += [t.function.arguments for t in delta.tool_calls or []]
        assert ("".join(reasoning), "".join(arguments)) == ("Need weather.", PARIS)
        sdk.close()


def test_engine_idle_after_all(client):
    for name in ("deepseek-chat", "deepseek-reasoner"):
        wait_until_idle(client.app.state.seekserve.models[name].engine.engine)


def test_fim_on_the_reasoner_is_refused(client):
    response = client.post(
        "/beta/completions",
        json={"model": "deepseek-reasoner", "prompt": "def f():", "suffix": "\n", "max_tokens": 4},
    )
    assert_error(
        response,
        400,
        "Invalid model value: deepseek-reasoner is a thinking model, which does not support "
        "FIM completion; use a non-thinking model such as deepseek-chat",
        "model",
    )
