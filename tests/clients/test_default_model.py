"""The clients against a live server on the default model (SmolLM2-135M-Instruct, the real
GGUF `make serve` serves): what a model happens to say is not asserted, only that every
client parses every shape — create, stream, usage — and that stream and body agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from tests.api.live import LiveServer, live_server
from tests.conftest import engine_config

MESSAGES = [{"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def default_server(smollm2_gguf: Path) -> Iterator[LiveServer]:
    config = engine_config(smollm2_gguf, num_blocks=128, block_size=16, dtype="float32")
    with live_server(create_app(ServerConfig(), [config]), startup_timeout_s=120) as live:
        yield live


def test_openai_sdk_on_the_default_model(default_server):
    client = openai.OpenAI(base_url=default_server.base_url, api_key="sk-x", max_retries=0)
    body = client.chat.completions.create(
        model="deepseek-chat", messages=MESSAGES, temperature=0, max_tokens=12
    )
    choice = body.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    assert body.usage.completion_tokens <= 12
    assert body.usage.prompt_tokens == (
        body.usage.prompt_cache_hit_tokens + body.usage.prompt_cache_miss_tokens  # type: ignore[attr-defined]
    )
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model="deepseek-chat",
        messages=MESSAGES,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == choice.message.content  # greedy: stream and body agree
    assert usage is not None and usage.completion_tokens == body.usage.completion_tokens
    client.close()


def test_langchain_on_the_default_model(default_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=default_server.base_url,
        api_key="sk-x",
        model="deepseek-chat",
        temperature=0,
        max_tokens=12,
        max_retries=0,
    )
    answer = llm.invoke("Name a color.")
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata["output_tokens"] <= 12
    streamed = "".join(chunk.content for chunk in llm.stream("Name a color."))
    assert streamed == answer.content
