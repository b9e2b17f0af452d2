"""Every validation rule of POST /chat/completions, with DeepSeek's status and wording
(spec §2, §8.11, §13); after each rejected request the server still answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seekserve.api.protocol import JSON_SCHEMA_UNAVAILABLE, PREFIX_NEEDS_BETA
from seekserve.api.routes.completions import COMPLETIONS_NEED_BETA
from tests.api.helpers import (
    CHAT,
    DESERIALIZE,
    MODEL,
    assert_error,
    assert_still_serving,
    chat_body,
    engine_of,
)

SEED_FILE = Path("/work/shared/spec/seed-create-chat-completion.txt")
USER = {"role": "user", "content": "Hi"}


def _tool(name: str = "get_weather") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def _without(field: str) -> dict[str, Any]:
    body = chat_body()
    del body[field]
    return body


# -- the body is not a JSON object --------------------------------------------------------

RAW_BODIES = [
    pytest.param(
        b"not json",
        400,
        "Failed to parse the request body as JSON: Expecting value at line 1 column 1",
        id="not-json",
    ),
    pytest.param(
        b"",
        400,
        "Failed to parse the request body as JSON: Expecting value at line 1 column 1",
        id="empty-body",
    ),
    pytest.param(
        b'{"model": "deepseek-chat",\n "messages": [}',
        400,
        "Failed to parse the request body as JSON: Expecting value at line 2 column 15",
        id="truncated-json",
    ),
    pytest.param(
        b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "\xff"}]}',
        400,
        "Failed to parse the request body as JSON: invalid UTF-8 at byte 69",
        id="invalid-utf8",
    ),
    pytest.param(
        b"[]",
        422,
        DESERIALIZE + "invalid type: sequence, expected struct ChatCompletionRequest",
        id="json-array",
    ),
    pytest.param(
        b'"hello"',
        422,
        DESERIALIZE + 'invalid type: string "hello", expected struct ChatCompletionRequest',
        id="json-string",
    ),
    pytest.param(
        b"null",
        422,
        DESERIALIZE + "invalid type: null, expected struct ChatCompletionRequest",
        id="json-null",
    ),
]


@pytest.mark.parametrize(("raw", "status", "message"), RAW_BODIES)
def test_body_that_is_not_a_json_object(client, raw, status, message):
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_error(response, status, message)
    assert_still_serving(client)


# -- pass 1: shape and types (serde's wording; 400 under messages/tools, else 422) --------

SHAPES = [
    pytest.param(
        _without("messages"), 400, "missing field `messages`", "messages", id="no-messages"
    ),
    pytest.param(_without("model"), 422, "missing field `model`", "model", id="no-model"),
    pytest.param(
        chat_body(temperature="1.3"),
        422,
        'temperature: invalid type: string "1.3", expected a number',
        "temperature",
        id="temperature-string",
    ),
    pytest.param(
        chat_body(temperature=True),
        422,
        "temperature: invalid type: boolean `true`, expected a number",
        "temperature",
        id="temperature-boolean",
    ),
    pytest.param(
        chat_body(max_tokens=1.5),
        422,
        "max_tokens: invalid type: floating point `1.5`, expected an integer",
        "max_tokens",
        id="max-tokens-float",
    ),
    pytest.param(
        chat_body(max_tokens="16"),
        422,
        'max_tokens: invalid type: string "16", expected an integer',
        "max_tokens",
        id="max-tokens-string",
    ),
    pytest.param(
        chat_body(stream="yes"),
        422,
        'stream: invalid type: string "yes", expected a boolean',
        "stream",
        id="stream-string",
    ),
    pytest.param(
        chat_body(stream=True, stream_options={"include_usage": 1}),
        422,
        "stream_options.include_usage: invalid type: integer `1`, expected a boolean",
        "stream_options.include_usage",
        id="include-usage-integer",
    ),
    pytest.param(
        chat_body(stream=True, stream_options=True),
        422,
        "stream_options: invalid type: boolean `true`, expected struct StreamOptions",
        "stream_options",
        id="stream-options-boolean",
    ),
    pytest.param(
        chat_body(thinking=False),
        422,
        "thinking: invalid type: boolean `false`, expected struct ThinkingOptions",
        "thinking",
        id="thinking-boolean",
    ),
    pytest.param(
        chat_body(thinking={"type": "auto"}),
        422,
        "thinking.type: unknown variant `auto`, expected `enabled` or `disabled`",
        "thinking.type",
        id="thinking-unknown-type",
    ),
    pytest.param(
        chat_body(logprobs="true"),
        422,
        'logprobs: invalid type: string "true", expected a boolean',
        "logprobs",
        id="logprobs-string",
    ),
    pytest.param(
        chat_body(n=1.0),
        422,
        "n: invalid type: floating point `1.0`, expected an integer",
        "n",
        id="n-float",
    ),
    pytest.param(
        chat_body(stop=5),
        422,
        "stop: invalid type: integer `5`, expected a string",
        "stop",
        id="stop-integer",
    ),
    pytest.param(
        chat_body(stop=["a", 5]),
        422,
        "stop[1]: invalid type: integer `5`, expected a string",
        "stop[1]",
        id="stop-list-with-integer",
    ),
    pytest.param(
        chat_body(response_format={"type": "xml"}),
        422,
        "response_format.type: unknown variant `xml`, expected one of `text`, `json_object`, "
        "`json_schema`",
        "response_format.type",
        id="response-format-unknown-type",
    ),
    pytest.param(
        chat_body(response_format="json_object"),
        422,
        'response_format: invalid type: string "json_object", expected struct ResponseFormat',
        "response_format",
        id="response-format-string",
    ),
    pytest.param(
        chat_body(tool_choice="sometimes"),
        422,
        "tool_choice: unknown variant `sometimes`, expected one of `none`, `auto`, `required`",
        "tool_choice",
        id="tool-choice-unknown",
    ),
    pytest.param(
        chat_body(tool_choice={"type": "function"}),
        422,
        "tool_choice: missing field `function`",
        "tool_choice.function",
        id="tool-choice-without-function",
    ),
    pytest.param(
        chat_body(model=7),
        422,
        "model: invalid type: integer `7`, expected a string",
        "model",
        id="model-integer",
    ),
    pytest.param(
        chat_body(messages="Hi"),
        400,
        'messages: invalid type: string "Hi", expected a sequence',
        "messages",
        id="messages-string",
    ),
    pytest.param(
        chat_body(messages=["Hi"]),
        400,
        'messages[0]: invalid type: string "Hi", expected a map',
        "messages[0]",
        id="message-string",
    ),
    pytest.param(
        chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]),
        400,
        "messages[0].content: invalid type: sequence, expected a string",
        "messages[0].content",
        id="content-array",
    ),
    pytest.param(
        chat_body(messages=[{"role": "user", "content": None}]),
        400,
        "messages[0].content: invalid type: null, expected a string",
        "messages[0].content",
        id="user-content-null",
    ),
    pytest.param(
        chat_body(messages=[{"role": "user"}]),
        400,
        "messages[0]: missing field `content`",
        "messages[0].content",
        id="user-without-content",
    ),
    pytest.param(
        chat_body(messages=[{"role": "system", "content": "Be brief."}, {"role": "developer"}]),
        400,
        "messages[1].role: unknown variant `developer`, expected one of `system`, `user`, "
        "`assistant`, `tool`",
        "messages[1].role",
        id="role-developer",
    ),
    pytest.param(
        chat_body(messages=[{"content": "Hi"}]),
        400,
        "messages[0]: missing field `role`",
        "messages[0]",
        id="no-role",
    ),
    pytest.param(
        chat_body(messages=[USER, {"role": "tool", "content": "22 C"}]),
        400,
        "messages[1]: missing field `tool_call_id`",
        "messages[1].tool_call_id",
        id="tool-message-without-tool-call-id",
    ),
    pytest.param(
        chat_body(messages=[USER, {"role": "assistant", "content": "x", "prefix": "yes"}]),
        400,
        'messages[1].prefix: invalid type: string "yes", expected a boolean',
        "messages[1].prefix",
        id="prefix-string",
    ),
    pytest.param(
        chat_body(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_0", "function": {"name": "f"}}],
                },
            ]
        ),
        400,
        "messages[1].tool_calls[0].function: missing field `arguments`",
        "messages[1].tool_calls[0].function.arguments",
        id="tool-call-without-arguments",
    ),
    pytest.param(
        chat_body(tools=[{"type": "namespace", "function": {"name": "f"}}]),
        400,
        "tools[0].type: unknown variant `namespace`, expected `function`",
        "tools[0].type",
        id="tool-type-namespace",
    ),
    pytest.param(
        chat_body(tools=[{"type": "function"}]),
        400,
        "tools[0]: missing field `function`",
        "tools[0].function",
        id="tool-without-function",
    ),
    pytest.param(
        chat_body(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
        400,
        'tools[0].function.strict: invalid type: string "yes", expected a boolean',
        "tools[0].function.strict",
        id="tool-strict-string",
    ),
]


@pytest.mark.parametrize(("body", "status", "reason", "param"), SHAPES)
def test_shape_and_type_errors(client, body, status, reason, param):
    assert_error(client.post(CHAT, json=body), status, DESERIALIZE + reason, param)
    assert_still_serving(client)


# -- pass 2: values and ranges (400) -------------------------------------------------------

NAME_RULE = "a function name must be 1 to 64 characters of a-z, A-Z, 0-9, underscores and dashes"
VALUES = [
    *[
        pytest.param(
            {"temperature": value},
            "Invalid temperature value, the valid range of temperature is [0, 2.0]",
            "temperature",
            id=f"temperature={value}",
        )
        for value in (-0.1, 2.1)
    ],
    *[
        pytest.param(
            {"top_p": value},
            "Invalid top_p value, the valid range of top_p is (0, 1.0]",
            "top_p",
            id=f"top_p={value}",
        )
        for value in (0, -0.5, 1.1)
    ],
    *[
        pytest.param(
            {name: value},
            f"Invalid {name} value, the valid range of {name} is [-2.0, 2.0]",
            name,
            id=f"{name}={value}",
        )
        for name in ("frequency_penalty", "presence_penalty")
        for value in (-2.1, 2.1)
    ],
    *[
        pytest.param(
            {"max_tokens": value},
            "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]",
            "max_tokens",
            id=f"max_tokens={value}",
        )
        for value in (0, -1, 8193)
    ],
    *[
        pytest.param(
            {"logprobs": True, "top_logprobs": value},
            "Invalid top_logprobs value, the valid range of top_logprobs is [0, 20]",
            "top_logprobs",
            id=f"top_logprobs={value}",
        )
        for value in (21, -1)
    ],
    *[
        pytest.param(
            fields,
            "Invalid top_logprobs and logprobs value: top_logprobs requires logprobs to be true",
            "top_logprobs",
            id=f"top_logprobs-{label}",
        )
        for label, fields in (
            ("without-logprobs", {"top_logprobs": 5}),
            ("with-logprobs-false", {"top_logprobs": 0, "logprobs": False}),
        )
    ],
    *[
        pytest.param(
            {"n": value},
            "Invalid n value (currently only n = 1 is supported)",
            "n",
            id=f"n={value}",
        )
        for value in (2, 0)
    ],
    pytest.param(
        {"stop": [f"s{i}" for i in range(17)]},
        "Invalid stop value, at most 16 stop sequences are allowed (got 17)",
        "stop",
        id="17-stop-strings",
    ),
    pytest.param(
        {"messages": []},
        "Invalid messages value, messages must contain at least one message",
        "messages",
        id="no-messages-in-list",
    ),
    *[
        pytest.param(
            fields,
            "Invalid stream_options value, stream_options is only allowed when stream is true",
            "stream_options",
            id=f"stream-options-{label}",
        )
        for label, fields in (
            ("stream-false", {"stream": False, "stream_options": {"include_usage": True}}),
            ("stream-omitted", {"stream_options": {"include_usage": False}}),
        )
    ],
    pytest.param(
        {"tools": [_tool(f"f{i}") for i in range(129)]},
        "Invalid tools value, at most 128 tools are supported (got 129)",
        "tools",
        id="129-tools",
    ),
    pytest.param(
        {"tools": [_tool("get weather")]},
        f"Invalid tools[0].function.name value 'get weather': {NAME_RULE}",
        "tools[0].function.name",
        id="function-name-with-space",
    ),
    pytest.param(
        {"tools": [_tool("ok"), _tool("x" * 65)]},
        f"Invalid tools[1].function.name value '{'x' * 65}': {NAME_RULE}",
        "tools[1].function.name",
        id="function-name-65-chars",
    ),
    pytest.param(
        {"tools": [_tool("")]},
        f"Invalid tools[0].function.name value '': {NAME_RULE}",
        "tools[0].function.name",
        id="function-name-empty",
    ),
    pytest.param(
        {"tools": [_tool("wetter.heute")]},
        f"Invalid tools[0].function.name value 'wetter.heute': {NAME_RULE}",
        "tools[0].function.name",
        id="function-name-with-dot",
    ),
    *[
        pytest.param(
            fields,
            "Invalid tool_choice value, tool_choice other than 'none' or 'auto' needs tools",
            "tool_choice",
            id=f"tool-choice-{label}",
        )
        for label, fields in (
            ("required-without-tools", {"tool_choice": "required"}),
            ("required-with-empty-tools", {"tool_choice": "required", "tools": []}),
            (
                "named-without-tools",
                {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            ),
        )
    ],
    pytest.param(
        {
            "tools": [_tool("f")],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "Invalid tool_choice value, function 'g' is not in tools",
        "tool_choice",
        id="tool-choice-names-unknown-function",
    ),
    pytest.param(
        {
            "messages": [
                USER,
                {"role": "assistant", "content": "Hello", "prefix": True},
                {"role": "user", "content": "Go on"},
            ]
        },
        "Invalid messages[1].prefix value, prefix is only allowed on the last message",
        "messages[1].prefix",
        id="prefix-not-on-last-message",
    ),
    pytest.param({"model": "deepseek-coder"}, "Model Not Exist", "model", id="unknown-model"),
    pytest.param({"model": ""}, "Model Not Exist", "model", id="empty-model"),
]


@pytest.mark.parametrize(("fields", "message", "param"), VALUES)
def test_value_and_range_errors(client, fields, message, param):
    assert_error(client.post(CHAT, json=chat_body(**fields)), 400, message, param)
    assert_still_serving(client)


BOUNDARIES = [
    pytest.param({"temperature": 2.0, "top_p": 0.01}, id="temperature-2-top_p-0.01"),
    pytest.param({"temperature": 0, "top_p": 1}, id="temperature-0-top_p-1"),
    pytest.param({"frequency_penalty": -2, "presence_penalty": 2}, id="penalties-at-limits"),
    pytest.param({"max_tokens": 1}, id="max_tokens-1"),
    pytest.param({"n": 1, "stop": [f"#{i}#" for i in range(16)]}, id="n-1-16-stop-strings"),
    pytest.param({"stop": "#stop#"}, id="stop-string"),
    pytest.param({"tools": [], "tool_choice": "auto"}, id="empty-tools"),
    pytest.param(
        {"stream": False, "stream_options": None, "logprobs": False, "top_logprobs": None},
        id="explicit-nulls",
    ),
    pytest.param({"thinking": {"type": "disabled"}}, id="thinking-disabled"),
    pytest.param({"logprobs": True, "top_logprobs": 20}, id="top_logprobs-20"),
    pytest.param({"logprobs": True, "top_logprobs": 0}, id="top_logprobs-0"),
    pytest.param({"response_format": {"type": "text"}}, id="response-format-text"),
    pytest.param({"seed": 7, "user": "u-1", "logit_bias": {}}, id="unknown-fields-ignored"),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "Be brief.", "name": "rules"},
                {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": None, "reasoning_content": "hmm"},
                {"role": "user", "content": "Again"},
            ]
        },
        id="multi-turn-null-assistant-content",
    ),
]


@pytest.mark.parametrize("fields", BOUNDARIES)
def test_values_at_the_limits_are_accepted(client, fields):
    response = client.post(CHAT, json=chat_body(**fields))
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


# -- context length ------------------------------------------------------------------------


def _num_prompt_tokens(client, content: str) -> int:
    served = client.app.state.seekserve.models[MODEL]
    text = served.chat_template.render(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    return len(served.tokenizer.encode(text))


def _context_error(max_len: int, num_prompt: int, num_output: int) -> str:
    return (
        f"This model's maximum context length is {max_len} tokens. However, you requested "
        f"{num_prompt + num_output} tokens ({num_prompt} in the messages, {num_output} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def test_context_overflow_by_max_tokens(client):
    max_len = engine_of(client).max_model_len
    assert max_len == 1024
    content = "lorem ipsum " * 150
    response = client.post(CHAT, json=chat_body(messages=[{"role": "user", "content": content}]))
    num_prompt = response.json()["usage"]["prompt_tokens"]
    assert num_prompt == _num_prompt_tokens(client, content)
    assert 300 < num_prompt < max_len - 8

    too_many = max_len - num_prompt + 1
    response = client.post(
        CHAT,
        json=chat_body(messages=[{"role": "user", "content": content}], max_tokens=too_many),
    )
    assert_error(response, 400, _context_error(max_len, num_prompt, too_many), "messages")
    assert_still_serving(client)

    # exactly the context length is fine
    response = client.post(
        CHAT,
        json=chat_body(
            messages=[{"role": "user", "content": content}], max_tokens=max_len - num_prompt
        ),
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["total_tokens"] <= max_len


def test_context_overflow_by_prompt_alone(client):
    """Without max_tokens the default is capped by the context, but at least 1 token."""
    content = "lorem ipsum " * 600
    num_prompt = _num_prompt_tokens(client, content)
    assert num_prompt > 1024
    body = chat_body(messages=[{"role": "user", "content": content}])
    del body["max_tokens"]
    assert_error(client.post(CHAT, json=body), 400, _context_error(1024, num_prompt, 1), "messages")
    assert_still_serving(client)


def test_default_max_tokens_fills_the_context(make_client):
    """No max_tokens: the API default (4096) capped by what the context leaves."""
    small = make_client(max_model_len=48)
    assert engine_of(small).max_model_len == 48
    response = small.post(CHAT, json=chat_body(max_tokens=None, ignore_eos=True))
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (31, 17)
    response = small.post(CHAT, json=chat_body(max_tokens=18))
    assert_error(response, 400, _context_error(48, 31, 18), "messages")
    assert_still_serving(small)


# -- pass 3: rules of the endpoint and the model kind -------------------------------------

UNSUPPORTED = [
    pytest.param(
        {"response_format": {"type": "json_object"}},
        "Prompt must contain the word 'json' in some form to use 'response_format' of type "
        "'json_object'.",
        "response_format",
        id="json-object-without-the-word-json",
    ),
    pytest.param(
        {"response_format": {"type": "json_schema"}},
        JSON_SCHEMA_UNAVAILABLE,
        "response_format",
        id="json-schema",
    ),
    pytest.param(
        {"thinking": {"type": "enabled"}},
        "Invalid thinking value: thinking mode is not available, no reasoning model is "
        "configured on this server (serve one as deepseek-reasoner)",
        "thinking",
        id="thinking-enabled",
    ),
    pytest.param(
        {"messages": [USER, {"role": "assistant", "content": "```python\n", "prefix": True}]},
        PREFIX_NEEDS_BETA,
        "prefix",
        id="prefix-without-beta",
    ),
]


@pytest.mark.parametrize(("fields", "message", "param"), UNSUPPORTED)
def test_unsupported_features_are_rejected(client, fields, message, param):
    assert_error(client.post(CHAT, json=chat_body(**fields)), 400, message, param)
    assert_still_serving(client)


def test_exact_deepseek_texts():
    assert JSON_SCHEMA_UNAVAILABLE == "This response_format type is unavailable now"
    assert PREFIX_NEEDS_BETA == (
        "prefix is only available when using beta api "
        '(set base_url="https://api.deepseek.com/beta")'
    )
    assert COMPLETIONS_NEED_BETA == (
        "completions api is only available when using beta api "
        '(set base_url="https://api.deepseek.com/beta")'
    )


@pytest.mark.parametrize("path", ["/completions", "/v1/completions"])
def test_completions_without_beta(client, path):
    response = client.post(path, json={"model": MODEL, "prompt": "def f(", "suffix": ")"})
    assert_error(response, 400, COMPLETIONS_NEED_BETA)
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/embeddings"), ("GET", "/user/info"), ("POST", "/v2/chat/completions")],
)
def test_unknown_path_is_404(client, method, path):
    assert_error(client.request(method, path, json={}), 404, "Not Found")
    assert_still_serving(client)


def test_wrong_method_is_405(client):
    assert_error(client.get(CHAT), 405, "Method Not Allowed")
    assert_still_serving(client)


def test_unknown_model_card_is_404(client):
    response = client.get("/models/deepseek-coder")
    assert_error(response, 404, "Model Not Exist: 'deepseek-coder'", "model")
    assert_still_serving(client)


# -- the seed request -------------------------------------------------------------------------


def _seed_body() -> dict[str, Any]:
    """The JSON body of the seed document's curl example."""
    text = SEED_FILE.read_text()
    start = text.index("--data '") + len("--data '")
    return json.loads(text[start : text.index("'", start)])


def test_seed_request_is_accepted(client):
    body = _seed_body()
    assert body["tools"] is None and body["tool_choice"] == "none"
    assert body["response_format"] == {"type": "text"} and body["logprobs"] is False
    assert body["max_tokens"] == 2048
    # the seed's max_tokens (2048) is more than the tiny model's whole context (1024): keep
    # every other field as sent
    response = client.post(CHAT, json={**body, "max_tokens": 16})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 16

    num_prompt = response.json()["usage"]["prompt_tokens"]
    assert_error(
        client.post(CHAT, json=body), 400, _context_error(1024, num_prompt, 2048), "messages"
    )
    assert_still_serving(client)
