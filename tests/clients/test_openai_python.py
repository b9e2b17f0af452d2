"""The official `openai` Python SDK beyond tests/api/test_openai_sdk.py's sync basics:
`AsyncOpenAI` (JSON and stream), tools, `response_format`, a reasoner's
`reasoning_content`, and the beta features through `extra_body` / `suffix` on …/beta."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.api.live import LiveServer
from tests.clients.test_deepseek_docs_http import GET_WEATHER, JSON_SYSTEM_PROMPT

HANGZHOU = [{"role": "user", "content": "How's the weather in Hangzhou, Zhejiang?"}]


@pytest.fixture(scope="module")
def sdk(server: LiveServer):
    with openai.OpenAI(base_url=server.base_url, api_key="sk-unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def beta(server: LiveServer):
    base_url = f"{server.base_url}/beta"
    with openai.OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0) as client:
        yield client


def run(coroutine):
    return asyncio.run(coroutine)


def test_async_create_and_stream(server):
    async def talk() -> tuple[str, list[str], str | None]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-unused", max_retries=0
        ) as client:
            messages = [{"role": "user", "content": "remember the number seven"}]
            reply = await client.chat.completions.create(model="deepseek-chat", messages=messages)
            stream = await client.chat.completions.create(
                model="deepseek-chat",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                usage = chunk.usage or usage
            assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
            return reply.choices[0].message.content, pieces, reply.choices[0].finish_reason

    content, pieces, finish_reason = run(talk())
    assert content == "Noted: seven." and finish_reason == "stop"
    assert "".join(pieces) == content and len(pieces) > 3  # token by token


def test_async_concurrent_requests(server):
    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="sk-unused", max_retries=0
        ) as client:
            questions = ["remember the number seven", "what number did I say"] * 3
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="deepseek-chat", messages=[{"role": "user", "content": q}]
                    )
                    for q in questions
                )
            )
            return [r.choices[0].message.content for r in replies]

    assert run(ask_all()) == ["Noted: seven.", "You said seven."] * 3


def test_tools(sdk):
    reply = sdk.chat.completions.create(
        model="deepseek-chat", messages=HANGZHOU, tools=[GET_WEATHER]
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name) == ("function", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "Hangzhou, Zhejiang"}
    # the round trip: the SDK's own message object goes back in the history
    second = sdk.chat.completions.create(
        model="deepseek-chat",
        messages=[
            *HANGZHOU,
            choice.message,
            {"role": "tool", "tool_call_id": call.id, "content": "24℃"},
        ],
        tools=[GET_WEATHER],
    )
    assert second.choices[0].message.content == "It is 24℃ in Hangzhou."


def test_tools_streamed(sdk):
    stream = sdk.chat.completions.create(
        model="deepseek-chat", messages=HANGZHOU, tools=[GET_WEATHER], stream=True
    )
    names, arguments, finish_reasons = [], "", []
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.function.name:
                names.append(call.function.name)
            arguments += call.function.arguments or ""
        finish_reasons.append(chunk.choices[0].finish_reason)
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"location": "Hangzhou, Zhejiang"}
    assert finish_reasons[-1] == "tool_calls"


def test_response_format_json_object(sdk):
    reply = sdk.chat.completions.create(
        model="deepseek-chat",
        messages=[
            {"role": "system", "content": JSON_SYSTEM_PROMPT},
            {"role": "user", "content": "Which is the longest river in the world? The Nile River."},
        ],
        response_format={"type": "json_object"},
    )
    assert json.loads(reply.choices[0].message.content) == {
        "question": "Which is the longest river in the world?",
        "answer": "The Nile River",
    }


def test_reasoning_content_reaches_the_sdk(sdk):
    reply = sdk.chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": "think please"}]
    )
    message = reply.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == (
        "Hello!",
        "A greeting.",
    )
    chunks = list(
        sdk.chat.completions.create(
            model="deepseek-reasoner",
            messages=[{"role": "user", "content": "think please"}],
            stream=True,
        )
    )
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks
    )
    assert reasoning == "A greeting."


def test_thinking_through_extra_body(sdk):
    """`thinking` is not an SDK parameter: it travels in `extra_body`, as DeepSeek's docs
    show, and switches deepseek-chat to the served thinking model."""
    reply = sdk.chat.completions.create(
        model="deepseek-chat",
        messages=[{"role": "user", "content": "think please"}],
        extra_body={"thinking": {"type": "enabled"}},
    )
    assert reply.choices[0].message.model_extra["reasoning_content"] == "A greeting."


def test_chat_prefix_completion_on_beta(beta):
    reply = beta.chat.completions.create(
        model="deepseek-chat",
        messages=[
            {"role": "user", "content": "Please write quick sort code"},
            {"role": "assistant", "content": "```python\n", "prefix": True},
        ],
        stop=["```"],
    )
    assert reply.choices[0].message.content == "def quick_sort(arr):\n    return arr\n"


def test_prefix_outside_beta_is_refused(sdk):
    with pytest.raises(openai.BadRequestError, match="prefix is only available"):
        sdk.chat.completions.create(
            model="deepseek-chat",
            messages=[
                {"role": "user", "content": "Please write quick sort code"},
                {"role": "assistant", "content": "```python\n", "prefix": True},
            ],
        )


def test_fim_completion_on_beta(beta):
    completion = beta.completions.create(
        model="deepseek-chat",
        prompt="def fib(a):",
        suffix="    return fib(a-1) + fib(a-2)",
        max_tokens=128,
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "\n    if a <= 1:\n        return a\n"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0


def test_fim_completion_streamed(beta):
    stream = beta.completions.create(
        model="deepseek-chat",
        prompt="def fib(a):",
        suffix="    return fib(a-1) + fib(a-2)",
        max_tokens=128,
        stream=True,
    )
    assert "".join(c.choices[0].text for c in stream) == "\n    if a <= 1:\n        return a\n"
