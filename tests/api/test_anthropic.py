"""`POST /anthropic/v1/messages` with the official `anthropic` SDK against a live server over
the scripted models (tests/api/scripted_chat.py), so every block, delta and stop reason is
known in advance: tool use round trips, text, stop reasons, thinking, model mapping, errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.output.tool_calls import HERMES, tool_call_id
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.prompt.tools import render_chat
from tests.api.helpers import assert_error, wait_until_idle
from tests.api.live import LiveServer, live_server
from tests.api.scripted_chat import CHAT_SCRIPTS, REASONER_SCRIPTS, scripted_configs
from tests.scripted import encode_pieces

MESSAGES = "/anthropic/v1/messages"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "cache_control": {"type": "ephemeral"},  # ignored
}
TIME = {
    "name": "get_time",
    "input_schema": {
        "type": "object",
        "properties": {"zone": {"type": "string"}},
        "required": ["zone"],
    },
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> list:
    return scripted_configs(tmp_path_factory.mktemp("scripted-anthropic"), tokenizer)


@pytest.fixture(scope="module")
def live(configs: list) -> Iterator[LiveServer]:
    with live_server(create_app(ServerConfig(), configs)) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(live: LiveServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=f"{live.base_url}/anthropic", api_key="sk-unused", max_retries=0
    )
    yield client
    client.close()


def num_tokens(tokenizer: Tokenizer, key: str, upto: str | None = None) -> int:
    """Tokens of a script's reply (up to and including the piece `upto`)."""
    pieces = {**CHAT_SCRIPTS, **REASONER_SCRIPTS}[key]
    if upto is not None:
        pieces = pieces[: pieces.index(upto) + 1]
    return len(encode_pieces(tokenizer, pieces))


def ask(user: str | list[dict], model: str = "deepseek-chat", **fields: Any) -> dict[str, Any]:
    """Keyword arguments of `messages.create` (and the JSON body of a raw request). The
    scripted replies are the same at any temperature (this SDK version sends temperature and
    top_p only through `extra_body`)."""
    messages = user if isinstance(user, list) else [{"role": "user", "content": user}]
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 100,
        "messages": messages,
        "tools": [WEATHER, TIME],
    }
    request.update(fields)
    return {k: v for k, v in request.items() if v is not None}


def dump(message: anthropic.types.Message) -> dict[str, Any]:
    """The message as its wire JSON (unset optional fields left out)."""
    return message.model_dump(exclude_none=True)


def call_id(message_id: str, index: int = 0) -> str:
    """The tool_use id of call `index` in the message `message_id` (msg_ + request id hex)."""
    return tool_call_id(str(uuid.UUID(message_id.removeprefix("msg_"))), index)


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of an Anthropic stream, checking the framing."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in response.text.split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message minus what differs between two runs of one request: its id (and the ids
    derived from it), and how the prompt splits into cached and not cached tokens."""
    usage = message["usage"]
    content = [{**b, "id": "-"} if b["type"] == "tool_use" else b for b in message["content"]]
    num_prompt_tokens = usage["input_tokens"] + usage["cache_read_input_tokens"]
    rest = {k: v for k, v in usage.items() if k not in ("input_tokens", "cache_read_input_tokens")}
    return {
        **message,
        "id": "-",
        "content": content,
        "usage": {**rest, "prompt": num_prompt_tokens},
    }


# -- tool use --------------------------------------------------------------------------------


def test_tool_use(sdk, tokenizer):
    out = sdk.messages.create(**ask("weather please"))
    assert dump(out) == {
        "id": out.id,
        "type": "message",
        "role": "assistant",
        "model": "deepseek-chat",
        "content": [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": call_id(out.id),
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": out.usage.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": out.usage.cache_read_input_tokens,
            "output_tokens": num_tokens(tokenizer, "weather please") + 1,  # + <|im_end|>
        },
    }
    assert out.id.startswith("msg_") and out.stop_sequence is None


def test_tool_use_streamed_equals_the_message(sdk):
    body = sdk.messages.create(**ask("weather please"))
    with sdk.messages.stream(**ask("weather please")) as stream:
        kinds = {event.type for event in stream}
        streamed = stream.get_final_message()
    assert comparable(dump(streamed)) == comparable(dump(body))
    assert streamed.content[1].id == call_id(streamed.id)
    assert {"text", "input_json", "content_block_stop"} <= kinds  # the SDK's derived events
    # create(stream=True): the raw events
    raw = [event.type for event in sdk.messages.create(**ask("weather please"), stream=True)]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == raw.count("content_block_stop") == 2


def test_tool_use_stream_events_exactly(live, tokenizer):
    response = httpx.post(live.base_url + MESSAGES, json={**ask("weather please"), "stream": True})
    events = sse_events(response)
    message_id = events[0][1]["message"]["id"]
    prompt = events[0][1]["message"]["usage"]["input_tokens"]

    def delta(index: int, kind: str, key: str, text: str) -> tuple[str, dict]:
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": kind, key: text},
        }

    def text(piece: str) -> tuple[str, dict]:
        return delta(0, "text_delta", "text", piece)

    def arguments(piece: str) -> tuple[str, dict]:
        return delta(1, "input_json_delta", "partial_json", piece)

    final_usage = events[-2][1]["usage"]
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": "deepseek-chat",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": prompt,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 0,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *[text(piece) for piece in ("Let", " me", " check", ".")],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": call_id(message_id),
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        *[arguments(piece) for piece in ('{"', "city", '":', " ", '"', "Paris", '"}')],
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {
                    "input_tokens": final_usage["input_tokens"],
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": final_usage["cache_read_input_tokens"],
                    "output_tokens": num_tokens(tokenizer, "weather please") + 1,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert final_usage["input_tokens"] + final_usage["cache_read_input_tokens"] == prompt


def test_tool_result_round_trip(sdk, live, tokenizer):
    """The assistant's tool_use goes back with a tool_result; the next request renders it as
    the chat pipeline renders the same history in OpenAI's shape (equal prompt tokens)."""
    first = sdk.messages.create(**ask("weather please"))
    tool_use = first.content[1]
    history = [
        {"role": "user", "content": "weather please"},
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C"},
                {"type": "text", "text": "no call please"},
            ],
        },
    ]
    second = sdk.messages.create(**ask(history))
    assert second.content == [anthropic.types.TextBlock(type="text", text="It is sunny.")]
    assert second.stop_reason == "end_turn"
    with sdk.messages.stream(**ask(history)) as stream:
        streamed = stream.get_final_message()
    assert comparable(dump(streamed)) == comparable(dump(second))

    flat = [
        {"role": "user", "content": "weather please"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": tool_use.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18 C", "tool_call_id": tool_use.id},
        {"role": "user", "content": "no call please"},
    ]
    served = live.app.state.seekserve.models["deepseek-chat"]
    tools = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                **({"description": t["description"]} if "description" in t else {}),
                "parameters": t["input_schema"],
            },
        }
        for t in (WEATHER, TIME)
    ]
    prompt = render_chat(served.chat_template, flat, tools, HERMES)
    assert "<tool_response>\n18 C\n</tool_response>" in prompt
    usage = second.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(tokenizer.encode(prompt))
    # the same history through /chat/completions
    chat = httpx.post(
        live.base_url + "/chat/completions",
        json={
            "model": "deepseek-chat",
            "messages": flat,
            "tools": tools,
            "temperature": 0,
            "max_tokens": 100,
        },
    ).json()
    assert chat["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt))


def test_parallel_tool_use(sdk):
    out = sdk.messages.create(**ask("parallel please"))
    assert [(b.type, b.name, b.input, b.id) for b in out.content] == [
        ("tool_use", "get_weather", {"city": "Paris"}, call_id(out.id, 0)),
        ("tool_use", "get_time", {"zone": "CET"}, call_id(out.id, 1)),
    ]
    assert out.stop_reason == "tool_use"
    with sdk.messages.stream(**ask("parallel please")) as stream:
        assert comparable(dump(stream.get_final_message())) == comparable(dump(out))


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "auto"},
        {"type": "any"},
        {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    ],
)
def test_tool_choices_that_allow_the_scripted_call(sdk, choice):
    """The script's call (markup split mid-tag) passes every mode's grammar untouched."""
    out = sdk.messages.create(**ask("split please", tool_choice=choice))
    assert dump(out)["content"] == [
        {
            "type": "tool_use",
            "id": call_id(out.id),
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
    ]
    assert out.stop_reason == "tool_use"


def test_tool_choice_none_leaves_markup_as_text(sdk):
    out = sdk.messages.create(**ask("weather please", tool_choice={"type": "none"}))
    assert [b.type for b in out.content] == ["text"]
    assert out.content[0].text.startswith("Let me check.\n\n<tool_call>")
    assert out.stop_reason == "end_turn"


# -- text ------------------------------------------------------------------------------------


def test_text_stop_reasons(sdk):
    out = sdk.messages.create(
        **ask("no call please", system="Be brief."),
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u"}},
    )
    assert (dump(out)["content"], out.stop_reason) == (
        [{"type": "text", "text": "It is sunny."}],
        "end_turn",
    )
    out = sdk.messages.create(**ask("no call please", max_tokens=2))
    assert (out.content[0].text, out.stop_reason, out.usage.output_tokens) == (
        "It is",
        "max_tokens",
        2,
    )
    out = sdk.messages.create(**ask("no call please", stop_sequences=["zzz", " sunny"]))
    assert (out.content[0].text, out.stop_reason, out.stop_sequence) == (
        "It is",
        "stop_sequence",
        " sunny",
    )
    for fields in ({}, {"max_tokens": 2}, {"stop_sequences": ["zzz", " sunny"]}):
        request = ask("no call please", **fields)
        with sdk.messages.stream(**request) as stream:
            assert "".join(stream.text_stream) == {0: "It is sunny."}.get(len(fields), "It is")
            streamed = stream.get_final_message()
        assert comparable(dump(streamed)) == comparable(dump(sdk.messages.create(**request)))


def test_system_blocks_and_text_blocks(sdk, tokenizer, live):
    """System text blocks join into one system message; a user turn's text blocks into one
    user message (cache_control and citations ignored)."""
    blocks = [
        {"type": "text", "text": "Be", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "brief."},
    ]
    user = [{"role": "user", "content": [{"type": "text", "text": "no call please"}]}]
    out = sdk.messages.create(**ask(user, system=blocks, tools=None))
    assert out.content[0].text == "It is sunny."
    served = live.app.state.seekserve.models["deepseek-chat"]
    prompt = served.chat_template.render(
        [{"role": "system", "content": "Be\nbrief."}, {"role": "user", "content": "no call please"}]
    )
    usage = out.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(tokenizer.encode(prompt))


def test_prefill_continues_the_assistant_text(sdk, tokenizer, live):
    """A last assistant message is a prefill: its text follows the generation prompt and the
    reply continues after it (a prefix completion, as on /beta)."""
    messages = [
        {"role": "user", "content": "no call please"},
        {"role": "assistant", "content": "Sure:"},
    ]
    out = sdk.messages.create(**ask(messages, tools=None))
    assert (out.content[0].text, out.stop_reason) == ("It is sunny.", "end_turn")
    served = live.app.state.seekserve.models["deepseek-chat"]
    prompt = served.chat_template.render([messages[0]]) + "Sure:"
    usage = out.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(tokenizer.encode(prompt))


# -- thinking --------------------------------------------------------------------------------


def test_thinking_then_text(sdk, tokenizer):
    out = sdk.messages.create(**ask("think please", model="deepseek-reasoner", tools=None))
    assert dump(out)["content"] == [
        {"type": "thinking", "thinking": "A greeting.", "signature": ""},
        {"type": "text", "text": "Hello!"},
    ]
    assert (out.model, out.stop_reason) == ("deepseek-reasoner", "end_turn")
    assert out.usage.output_tokens == num_tokens(tokenizer, "think please") + 1
    with sdk.messages.stream(**ask("think please", model="deepseek-reasoner", tools=None)) as s:
        deltas = [
            (e.delta.type, getattr(e.delta, "thinking", None) or getattr(e.delta, "text", None))
            for e in s
            if e.type == "content_block_delta"
        ]
        streamed = s.get_final_message()
    assert deltas == [
        ("thinking_delta", "A"),
        ("thinking_delta", " greeting"),
        ("thinking_delta", "."),
        ("text_delta", "Hello"),
        ("text_delta", "!"),
    ]
    assert comparable(dump(streamed)) == comparable(dump(out))


def test_thinking_switch_selects_the_reasoner(sdk):
    for thinking in ({"type": "enabled", "budget_tokens": 1024}, {"type": "adaptive"}):
        out = sdk.messages.create(
            **ask("think please", model="claude-sonnet-4-5", tools=None, thinking=thinking)
        )
        assert out.model == "deepseek-reasoner"
        assert [b.type for b in out.content] == ["thinking", "text"]
    out = sdk.messages.create(
        **ask("no call please", model="deepseek-reasoner", thinking={"type": "disabled"})
    )
    assert (out.model, out.content[0].text) == ("deepseek-chat", "It is sunny.")


def test_thinking_blocks_in_history_stay_out_of_the_prompt(sdk, tokenizer, live):
    history = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "secret plan", "signature": "sig"},
                {"type": "text", "text": "Hello."},
            ],
        },
        {"role": "user", "content": "think please"},
    ]
    out = sdk.messages.create(**ask(history, model="deepseek-reasoner", tools=None))
    assert out.content[1].text == "Hello!"
    served = live.app.state.seekserve.models["deepseek-reasoner"]
    prompt = served.chat_template.render(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "think please"},
        ]
    )
    usage = out.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == len(tokenizer.encode(prompt))


def test_thinking_then_tool_use_streamed(sdk):
    request = ask("think then call", model="deepseek-reasoner")
    out = sdk.messages.create(**request)
    assert [b.type for b in out.content] == ["thinking", "tool_use"]
    assert (out.content[1].input, out.stop_reason) == ({"city": "Paris"}, "tool_use")
    with sdk.messages.stream(**request) as stream:
        assert comparable(dump(stream.get_final_message())) == comparable(dump(out))


# -- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claude-sonnet-4-5", "claude-3-haiku", "deepseek-chat"])
def test_unknown_model_names_map_to_deepseek_chat(sdk, name):
    out = sdk.messages.create(**ask("no call please", model=name))
    assert (out.model, out.content[0].text) == ("deepseek-chat", "It is sunny.")


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message", "param"),
    [
        (
            {"max_tokens": None},
            "Failed to deserialize the JSON body into the target type: missing field `max_tokens`",
            "max_tokens",
        ),
        (
            {"max_tokens": 0},
            "Invalid max_tokens value 0, max_tokens must be at least 1",
            "max_tokens",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": ""},
                            },
                        ],
                    }
                ]
            },
            "Invalid messages[0].content[1] value: content blocks of type `image` are not "
            "supported",
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]}
                ]
            },
            "Invalid messages[0].content[0] value: content blocks of type `redacted_thinking` "
            "are not supported",
            "messages[0].content",
        ),
        (
            {"tool_choice": {"type": "bogus"}},
            "Failed to deserialize the JSON body into the target type: tool_choice.type: "
            "unknown variant `bogus`, expected one of `auto`, `any`, `tool`, `none`",
            "tool_choice.type",
        ),
        (
            {"tool_choice": {"type": "tool"}},
            "Invalid tool_choice value: a tool_choice of type `tool` needs `name`",
            "tool_choice",
        ),
        (
            {"tool_choice": {"type": "tool", "name": "get_stock"}},
            "Invalid tool_choice value, function 'get_stock' is not in tools",
            "tool_choice",
        ),
        (
            {"temperature": 2.5},
            "Invalid temperature value, the valid range of temperature is [0, 2.0]",
            "temperature",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "Invalid tools[0].type value: tools of type `web_search_20250305` are not "
            "supported (only client tools with an input_schema)",
            "tools[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "Invalid messages[0].content[0] value: a `tool_result` block needs the field "
            "`tool_use_id`",
            "messages[0].content",
        ),
        (
            {"thinking": {"type": "sometimes"}},
            "Failed to deserialize the JSON body into the target type: thinking.type: unknown "
            "variant `sometimes`, expected one of `enabled`, `disabled`, `adaptive`",
            "thinking.type",
        ),
    ],
)
def test_bad_requests_name_the_field(live, change, message, param):
    body = {k: v for k, v in {**ask("weather please"), **change}.items() if v is not None}
    response = httpx.post(live.base_url + MESSAGES, json=body)
    assert_error(response, 400, message, param)


def test_sdk_raises_bad_request(sdk):
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(**ask("weather please", tool_choice={"type": "tool", "name": "x"}))
    assert caught.value.body["error"]["message"] == (
        "Invalid tool_choice value, function 'x' is not in tools"
    )


def test_keys_x_api_key_and_bearer(configs):
    app = create_app(ServerConfig(api_keys=("sk-test",)), configs)
    with live_server(app) as server:
        base_url = f"{server.base_url}/anthropic"
        for client in (
            anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0),
            anthropic.Anthropic(base_url=base_url, auth_token="sk-test", max_retries=0),
        ):
            out = client.messages.create(**ask("no call please"))
            assert out.content[0].text == "It is sunny."
            client.close()
        bad = anthropic.Anthropic(base_url=base_url, api_key="sk-wrong-1234", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(**ask("no call please"))
        bad.close()
        assert caught.value.body == {
            "error": {
                "message": "Authentication Fails, Your api key: ****1234 is invalid",
                "type": "authentication_error",
                "param": None,
                "code": "invalid_request_error",
            }
        }


def test_engines_idle_after_all(live):
    for name in ("deepseek-chat", "deepseek-reasoner"):
        wait_until_idle(live.app.state.seekserve.models[name].engine.engine)


def test_count_tokens_is_the_rendered_prompt(sdk):
    """Claude Code asks for a prompt's size first: the count equals the prompt the message
    then uses (uncached input + cache reads)."""
    messages = [{"role": "user", "content": "weather please"}]
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    counted = sdk.messages.count_tokens(model="deepseek-chat", messages=messages, tools=tools)
    message = sdk.messages.create(
        model="deepseek-chat", max_tokens=4, messages=messages, tools=tools
    )
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert counted.input_tokens > 50  # the tool prompt is in it
