"""Acceptance tests on a real model: Qwen2.5-Coder-0.5B-Instruct (GGUF) served as
deepseek-chat by a live uvicorn server, driven by the official `openai` SDK.

Compute dtype float32: on this 2-core CPU decode is bound by per-step overhead, so bf16 (AMX)
is hardly faster (measured 12 vs 10 tokens/s on a 100-token FIM answer), while fp32 greedy
output is token-for-token the same as transformers' (checked for the FIM prompt below) and far
less likely to flip a near-tie between a prefix-cached and an uncached run of the same prompt
(the stream-equals-non-stream test relies on that). A CI CPU without AVX512-BF16/AMX would
also run bf16 much slower than fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.prompt.fim import fim_prompt
from seekserve.prompt.tokenizer import Tokenizer
from tests.api.helpers import MODEL
from tests.api.live import LiveServer, live_server
from tests.conftest import engine_config


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    from seekserve.loader.sources import pull

    return pull("qwen2.5-coder-0.5b", progress=False)


@pytest.fixture(scope="module")
def server(qwen_gguf: Path) -> Iterator[LiveServer]:
    config = engine_config(
        qwen_gguf,
        num_blocks=128,  # 2,048 tokens of KV: plenty for one request at a time
        block_size=16,
        max_num_batched_tokens=512,
        max_num_seqs=8,
        dtype="float32",
    )
    with live_server(create_app(ServerConfig(), [config]), startup_timeout_s=180) as live:
        yield live


@pytest.fixture(scope="module")
def sdk(server: LiveServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-unused", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tokenizer(server: LiveServer) -> Tokenizer:
    return server.app.state.seekserve.models[MODEL].tokenizer


# -- JSON mode -------------------------------------------------------------------------------

JSON_PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Return a JSON object describing a person with keys name, "
      "age and city."}],
    [{"role": "user", "content": 'Give me a JSON object with a key "colors" holding a list of '
      "exactly 3 color names."}],
    [{"role": "system", "content": "You are a config generator. Always answer in JSON."},
     {"role": "user", "content": "A web server config: host, port and a debug flag."}],
    [{"role": "user", "content": "Write a short pancake recipe as JSON with keys title, "
      "ingredients (a list of strings) and steps (a list of strings). Keep it brief."}],
    [{"role": "user", "content": "Output JSON: the capital cities of France, Japan and Brazil, "
      "keyed by country."}],
    [{"role": "system", "content": "Reply only with a JSON object."},
     {"role": "user", "content": "What is 17 + 25? Put the result under the key answer."}],
    [{"role": "user", "content": "Describe a book as JSON: title, author, year, genres."}],
    [{"role": "user", "content": "Convert to JSON: temperature 21.5 C, humidity 40 percent, "
      "raining no."}],
    [{"role": "user", "content": "Return a JSON object mapping the English words one, two and "
      "three to their Spanish translations."}],
    [{"role": "system", "content": "You are an API that answers in JSON."},
     {"role": "user", "content": 'Give a JSON error response for "file not found" with a '
      "numeric code and a message."}],
]  # fmt: skip


def _json_completion(sdk: openai.OpenAI, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
        **kwargs,
    )


@pytest.mark.parametrize("messages", JSON_PROMPTS, ids=range(len(JSON_PROMPTS)))
def test_json_mode_answers_a_json_object(sdk, messages):
    completion = _json_completion(sdk, messages)
    (choice,) = completion.choices
    content = choice.message.content
    assert choice.finish_reason == "stop", content
    assert isinstance(json.loads(content), dict), content


def test_json_mode_stream_equals_non_stream(sdk):
    messages = JSON_PROMPTS[1]
    content = _json_completion(sdk, messages).choices[0].message.content
    chunks = list(_json_completion(sdk, messages, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(json.loads(streamed), dict)
    assert streamed == content


# -- logprobs --------------------------------------------------------------------------------


def test_chat_logprobs_are_consistent(sdk):
    """Greedy chat with top_logprobs=5: each token is its own best alternative, and the
    entries' bytes (a Japanese greeting included) spell the content exactly."""
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Say hello in French, Japanese, Chinese and Russian."}
        ],  # fmt: skip
        temperature=0,
        max_tokens=16,
        logprobs=True,
        top_logprobs=5,
    )
    (choice,) = completion.choices
    assert choice.finish_reason == "length"
    entries = choice.logprobs.content
    assert len(entries) == completion.usage.completion_tokens == 16
    for entry in entries:
        assert len(entry.top_logprobs) == 5
        best = entry.top_logprobs[0]
        # greedy: the chosen token is the most likely one, with the same logprob
        assert (entry.token, entry.logprob, entry.bytes) == (best.token, best.logprob, best.bytes)
        logprobs = [t.logprob for t in entry.top_logprobs]
        assert logprobs == sorted(logprobs, reverse=True)
        assert all(lp <= 0 for lp in logprobs)
        try:
            text = bytes(entry.bytes).decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a multi-byte character
        assert entry.token == text
    joined = b"".join(bytes(entry.bytes) for entry in entries)
    assert joined.decode("utf-8") == choice.message.content
    assert any(ord(char) > 0x7F for char in choice.message.content)  # multi-byte text covered


# -- fill-in-the-middle ----------------------------------------------------------------------


def test_fim_prompt_is_qwen_layout_of_single_special_ids(tokenizer):
    text = fim_prompt(tokenizer, "def f():\n", "\nf()\n")
    assert text == "<|fim_prefix|>def f():\n<|fim_suffix|>\nf()\n<|fim_middle|>"
    ids = tokenizer.encode(text)
    markers = [tokenizer.token_to_id(t) for t in tokenizer.fim_tokens]
    assert markers == [151659, 151661, 151660]
    # no bos, no chat template: the markers are the first, middle and last ids
    assert ids[0] == markers[0] and ids[-1] == markers[2] and markers[1] in ids
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    # end-of-text and llama.cpp's FIM end markers all end generation
    stops = {"<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
    assert tokenizer.eos_token_ids == {tokenizer.token_to_id(t) for t in stops}


def test_fim_fills_a_function_body(server):
    """The middle of a function whose body is missing: prefix + middle + suffix compiles, and
    the function computes fibonacci(10) == 55.

    What we found about this instruct model (Qwen2.5-Coder-0.5B-Instruct) and FIM: the PSM
    layout `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>` is exactly Qwen's
    documented one, each marker encodes to its single special id, and no bos or chat template
    is added (the test above). Qwen documents FIM on the base models; for the instruct
    models the maintainers say they can fill but less well (QwenLM/Qwen3-Coder issues #91,
    #206). For the prefix `def fibonacci(n):` + a docstring line, with this suffix, this
    model writes "```" and then prose about the function instead of code, and Qwen's
    repo-level wrapper (<|repo_name|>/<|file_sep|>) does not help. transformers' greedy
    generation on the same GGUF and prompt ids gives the same tokens, so that is the
    model, not the server. With a typed signature and no docstring it does write a correct
    body, then repeats the suffix's print line (a common FIM slip of small models), which is
    why only prefix + middle is executed, with print silenced.
    """
    prefix = "def fibonacci(n: int) -> int:\n    "
    suffix = "\n\nprint(fibonacci(10))\n"
    response = httpx.post(
        f"{server.base_url}/beta/completions",
        json={
            "model": MODEL,
            "prompt": prefix,
            "suffix": suffix,
            "temperature": 0,
            "max_tokens": 128,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    text = choice["text"]
    assert choice["finish_reason"] == "stop", text
    compile(prefix + text + suffix, "<fim>", "exec")
    namespace: dict[str, Any] = {"__builtins__": {"print": lambda *_, **__: None}}
    exec(prefix + text, namespace)  # one dict: the recursive calls look fibonacci up there
    assert namespace["fibonacci"](10) == 55, text


# -- tool calls ------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What's the weather like in Paris today?"}]


def test_weather_round_trip_with_tool_choice_required(sdk):
    """Required call → the model's call parsed into tool_calls → the tool's answer sent back
    → the model answers from it."""
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=64,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_00_")
    arguments = json.loads(call.function.arguments)
    assert "Paris" in arguments["location"]
    assert set(arguments) <= {"location", "unit"}

    second = sdk.chat.completions.create(
        model=MODEL,
        messages=[
            *WEATHER_QUESTION,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 22}'},
        ],
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=64,
    )
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert not answer.message.tool_calls
    assert "22" in answer.message.content


def test_weather_call_streamed(sdk):
    """The stream's fragments (first: index, id, type, name, "" arguments; then argument
    pieces) rebuild the non-stream call."""
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": WEATHER_QUESTION,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 64,
    }
    whole = sdk.chat.completions.create(**request).choices[0].message.tool_calls[0]
    fragments = []
    finish = None
    content = []
    for chunk in sdk.chat.completions.create(**request, stream=True):
        delta = chunk.choices[0].delta
        if delta.content:
            content.append(delta.content)
        fragments.extend(delta.tool_calls or [])
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == []
    head, *rest = fragments
    assert (head.index, head.type, head.function.name, head.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert head.id.startswith("call_00_")
    assert all(f.index == 0 and f.id is None and f.function.name is None for f in rest)
    assert "".join(f.function.arguments for f in rest) == whole.function.arguments
