"""The scripted chat server of the wire tests: a deepseek-chat with SmolLM2's tokenizer and
template (no tool support: the generic tool prompt), and a deepseek-reasoner whose template
opens the think block. Each user message below is answered with its reply, token pieces as
written (so markup is split exactly where a test wants it)."""

from __future__ import annotations

from pathlib import Path

from seekserve.prompt.tokenizer import Tokenizer
from tests.conftest import engine_config
from tests.scripted import build_scripted_model

R1_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)

WEATHER_CALL = [
    "<tool_call>",
    "\n",
    '{"name": "',
    "get_weather",
    '", "arguments": ',
    '{"city": ',
    '"Paris"}',
    "}\n",
    "</tool_call>",
]

CHAT_SCRIPTS: dict[str, list[str | int]] = {
    "weather please": ["Let me check.", "\n\n", *WEATHER_CALL],
    "split please": [
        "<to",
        "ol_ca",
        'll>\n{"na',
        'me": "get_weather", "argu',
        'ments": {"ci',
        'ty": "Par',
        'is"}}\n</tool',
        "_call>",
    ],
    "parallel please": [
        *WEATHER_CALL,
        "\n",
        "<tool_call>",
        "\n",
        '{"name": "',
        "get_time",
        '", "arguments": ',
        '{"zone": "CET"}',
        "}\n",
        "</tool_call>",
    ],
    "no call please": ["It", " is", " sunny", "."],
    # what JSON must escape, or may keep as is, in a content chunk
    "escapes please": ["Say", ' "hi"', " \\", "\tt\u00e9", " \U0001f600", "\u2028", "\x01", "end"],
    "bad args please": ["<tool_call>", "\n", '{"name": "get_weather", "arguments": {"city": 5}}'],
}

REASONER_SCRIPTS: dict[str, list[str | int]] = {
    "think please": ["A", " greeting", ".", "\n", "</think>", "\n\n", "Hello", "!"],
    "think then call": ["Need", " weather", ".", "\n", "</think>", "\n\n", *WEATHER_CALL],
    "think stop": ["One", " STOP", " two", "\n", "</think>", "\n\n", "Answer"],
    "think json": ["Plan", ".", "\n", "</think>", "\n\n", '{"a"', ": 1", "}"],
}


def scripted_configs(root: Path, tokenizer: Tokenizer) -> list:
    chat = build_scripted_model(root / "chat", tokenizer, CHAT_SCRIPTS)
    reasoner = build_scripted_model(
        root / "reasoner", tokenizer, REASONER_SCRIPTS, chat_template=R1_TEMPLATE
    )
    return [
        engine_config(chat, num_blocks=256),
        engine_config(reasoner, num_blocks=256, served_model_name="deepseek-reasoner"),
    ]
