"""LangChain's OpenAI and DeepSeek chat models pointed at SeekServe: invoke, stream, and
`bind_tools` with the call parsed into `AIMessage.tool_calls` (scripted replies)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_deepseek import ChatDeepSeek
from langchain_openai import ChatOpenAI

from tests.api.live import LiveServer


@tool
def get_weather(location: str) -> str:
    """Get weather of a location, the user should supply a location first."""
    return "24℃"


@pytest.fixture(scope="module", params=["langchain-openai", "langchain-deepseek"])
def chat_model(request, server: LiveServer):
    if request.param == "langchain-openai":
        return ChatOpenAI(
            base_url=server.base_url, api_key="sk-unused", model="deepseek-chat", max_retries=0
        )
    return ChatDeepSeek(
        api_base=server.base_url, api_key="sk-unused", model="deepseek-chat", max_retries=0
    )


def test_invoke(chat_model):
    reply = chat_model.invoke("remember the number seven")
    assert isinstance(reply, AIMessage)
    assert reply.content == "Noted: seven."
    assert reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["finish_reason"] == "stop"


def test_multi_turn_messages(chat_model):
    reply = chat_model.invoke(
        [
            HumanMessage("remember the number seven"),
            AIMessage("Noted: seven."),
            HumanMessage("what number did I say"),
        ]
    )
    assert reply.content == "You said seven."


def test_stream(chat_model):
    chunks = list(chat_model.stream("remember the number seven"))
    assert len(chunks) > 3
    assert "".join(c.content for c in chunks) == "Noted: seven."


def test_bind_tools(chat_model):
    model = chat_model.bind_tools([get_weather])
    question = HumanMessage("How's the weather in Hangzhou, Zhejiang?")
    reply = model.invoke([question])
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    (call,) = reply.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"location": "Hangzhou, Zhejiang"})
    assert call["id"]
    # run the tool and send its result back, as an agent loop does
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    answer = model.invoke([question, reply, result])
    assert answer.content == "It is 24℃ in Hangzhou."


def test_bind_tools_streamed(chat_model):
    model = chat_model.bind_tools([get_weather])
    chunks = list(model.stream("How's the weather in Hangzhou, Zhejiang?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    (call,) = merged.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"location": "Hangzhou, Zhejiang"})


def test_deepseek_reasoning_content(server):
    """ChatDeepSeek puts a reasoner's reasoning_content into additional_kwargs."""
    model = ChatDeepSeek(
        api_base=server.base_url, api_key="sk-unused", model="deepseek-reasoner", max_retries=0
    )
    reply = model.invoke("think please")
    assert reply.content == "Hello!"
    assert reply.additional_kwargs["reasoning_content"] == "A greeting."
