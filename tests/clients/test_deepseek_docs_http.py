"""DeepSeek's documented examples (api-docs.deepseek.com: multi-round conversation, JSON
output, function calling, chat prefix completion, FIM completion) sent as the raw HTTP their
curl versions send, against the scripted models: each answers 200 in DeepSeek's shape.
(The create-chat-completion curl itself is tests/api/test_seed_real_model.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.api.live import LiveServer

# -- the documents' request bodies -----------------------------------------------------------

JSON_SYSTEM_PROMPT = """
The user will provide some exam text. Please parse the "question" and "answer" and output them in JSON format.

EXAMPLE INPUT:
Which is the highest mountain in the world? Mount Everest.

EXAMPLE JSON OUTPUT:
{
    "question": "Which is the highest mountain in the world?",
    "answer": "Mount Everest"
}
"""  # noqa: E501
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather of a location, the user should supply a location first",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                }
            },
            "required": ["location"],
        },
    },
}
USAGE_KEYS = {
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "completion_tokens_details",
}


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer sk-unused", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        yield client


def chat(http: httpx.Client, body: dict, path: str = "/chat/completions") -> dict:
    response = http.post(path, content=json.dumps(body))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == body["model"]
    assert list(data) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    ]
    assert set(data["usage"]) == USAGE_KEYS
    (choice,) = data["choices"]
    assert choice["message"]["role"] == "assistant"
    return choice


def test_multi_round_conversation(http):
    messages = [{"role": "user", "content": "What's the highest mountain in the world?"}]
    first = chat(http, {"model": "deepseek-chat", "messages": messages})
    assert first["message"]["content"] == "The highest is Mount Everest."
    messages.append(first["message"])  # the documented loop appends the message as returned
    messages.append({"role": "user", "content": "What is the second?"})
    second = chat(http, {"model": "deepseek-chat", "messages": messages})
    assert (second["message"]["content"], second["finish_reason"]) == ("The second is K2.", "stop")


def test_json_output(http):
    body = {
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": JSON_SYSTEM_PROMPT},
            {"role": "user", "content": "Which is the longest river in the world? The Nile River."},
        ],
        "response_format": {"type": "json_object"},
    }
    choice = chat(http, body)
    assert json.loads(choice["message"]["content"]) == {
        "question": "Which is the longest river in the world?",
        "answer": "The Nile River",
    }


def test_function_calling_round_trip(http):
    messages: list[dict] = [{"role": "user", "content": "How's the weather in Hangzhou, Zhejiang?"}]
    body = {"model": "deepseek-chat", "messages": messages, "tools": [GET_WEATHER]}
    first = chat(http, body)
    assert first["finish_reason"] == "tool_calls"
    (tool_call,) = first["message"]["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["id"]
    assert tool_call["function"] == {
        "name": "get_weather",
        "arguments": '{"location": "Hangzhou, Zhejiang"}',
    }
    messages.append(first["message"])
    messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": "24℃"})
    second = chat(http, body)
    assert second["finish_reason"] == "stop"
    assert second["message"]["content"] == "It is 24℃ in Hangzhou."


def test_chat_prefix_completion(http):
    body = {
        "model": "deepseek-chat",
        "messages": [
            {"role": "user", "content": "Please write quick sort code"},
            {"role": "assistant", "content": "```python\n", "prefix": True},
        ],
        "stop": ["```"],
    }
    choice = chat(http, body, path="/beta/chat/completions")
    assert choice["message"]["content"] == "def quick_sort(arr):\n    return arr\n"
    assert choice["finish_reason"] == "stop"


def test_fim_completion(http):
    body = {
        "model": "deepseek-chat",
        "prompt": "def fib(a):",
        "suffix": "    return fib(a-1) + fib(a-2)",
        "max_tokens": 128,
    }
    response = http.post("/beta/completions", content=json.dumps(body))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion" and data["model"] == "deepseek-chat"
    assert data["choices"] == [
        {
            "text": "\n    if a <= 1:\n        return a\n",
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert set(data["usage"]) == USAGE_KEYS
