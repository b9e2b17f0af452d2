"""Tools and tool-call history in prompts: a template that takes tools (Qwen2.5-Coder's,
compared with transformers' `apply_chat_template` on the same GGUF) and one that does not
(SmolLM2's, which fails on `content: null` and has no tool role of its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seekserve.output.tool_calls import HERMES
from seekserve.prompt.chat_template import ChatTemplate, ChatTemplateError
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.prompt.tools import render_chat, tool_system_prompt

TOOLS = [
    {
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
]

# the wire's history, as api/protocol.template_messages hands it over
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_00_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_01_b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "content": "18 C", "tool_call_id": "call_00_a"},
    {"role": "tool", "content": "24 C", "tool_call_id": "call_01_b"},
]


def _template(tokenizer: Tokenizer) -> ChatTemplate:
    return ChatTemplate(tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token)


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    from seekserve.loader.sources import pull

    return pull("qwen2.5-coder-0.5b", progress=False)


def test_tool_template_matches_transformers(qwen_gguf):
    """Same text as transformers renders from the Hugging Face message convention
    (arguments as mappings), with tools and the full call/result history."""
    from transformers import AutoTokenizer

    ours = _template(Tokenizer.from_gguf(qwen_gguf))
    assert ours.takes_tools
    reference = AutoTokenizer.from_pretrained(qwen_gguf.parent, gguf_file=qwen_gguf.name)
    hf_history = json.loads(json.dumps(HISTORY))
    for call in hf_history[2]["tool_calls"]:
        call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    expected = reference.apply_chat_template(
        hf_history, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert render_chat(ours, HISTORY, TOOLS, HERMES) == expected
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}' in expected
    # without tools (tool_choice none) the history still renders
    expected = reference.apply_chat_template(hf_history, tokenize=False, add_generation_prompt=True)
    assert render_chat(ours, HISTORY, None, HERMES) == expected


def test_plain_template_gets_our_tool_prompt_and_flattened_history(smollm2_gguf):
    ours = _template(Tokenizer.from_gguf(smollm2_gguf))
    assert not ours.takes_tools
    with pytest.raises(ChatTemplateError):  # what we protect it from: content null
        ours.render([{"role": "assistant", "content": None}])
    text = render_chat(ours, HISTORY, TOOLS, HERMES)
    assert text == (
        "<|im_start|>system\nBe brief.\n\n" + tool_system_prompt(TOOLS, HERMES) + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
        "<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
        "<tool_response>\n24 C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tool_prompt_is_inserted_when_there_is_no_system_message(smollm2_gguf):
    ours = _template(Tokenizer.from_gguf(smollm2_gguf))
    text = render_chat(ours, [{"role": "user", "content": "Hi"}], TOOLS, HERMES)
    assert text.startswith("<|im_start|>system\nYou can call functions")
    assert json.dumps(TOOLS[0]) in text
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tool_system_prompt_shows_the_format():
    prompt = tool_system_prompt(TOOLS, HERMES)
    assert (
        '<tool_call>\n{"name": "<function name>", "arguments": <arguments as a JSON object>}\n'
        "</tool_call>"
    ) in prompt
    assert f"<tools>\n{json.dumps(TOOLS[0])}\n</tools>" in prompt
