"""One live SeekServe for the client tests: a scripted deepseek-chat (SmolLM2's tokenizer
and template, plus Qwen2.5-Coder's fill-in-the-middle tokens) and a scripted
deepseek-reasoner, on a real socket, so that every client library under test talks HTTP to
it exactly as it would to api.deepseek.com."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tokenizers

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.prompt.tokenizer import Tokenizer
from tests.api.live import LiveServer, live_server
from tests.api.scripted_chat import CHAT_SCRIPTS, R1_TEMPLATE, REASONER_SCRIPTS, WEATHER_CALL
from tests.conftest import engine_config
from tests.scripted import build_scripted_model

FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]

# DeepSeek's documented examples (api-docs.deepseek.com guides), each answered by a script
# keyed on its user message
HANGZHOU_CALL = [
    "<tool_call>",
    "\n",
    '{"name": "get_weather", "arguments": ',
    '{"location": "Hangzhou, Zhejiang"}',
    "}\n",
    "</tool_call>",
]
DOCS_SCRIPTS: dict[str, list[str | int]] = {
    # multi-round conversation
    "What's the highest mountain in the world?": ["The", " highest", " is", " Mount Everest."],
    "What is the second?": ["The", " second", " is", " K2."],
    # JSON output
    "Which is the longest river in the world? The Nile River.": [
        "{",
        '"question": "Which is the longest river in the world?"',
        ", ",
        '"answer": "The Nile River"',
        "}",
    ],
    # function calling: the question, then the tool result
    "How's the weather in Hangzhou, Zhejiang?": HANGZHOU_CALL,
    "24℃": ["It", " is", " 24", "℃", " in", " Hangzhou", "."],
    # chat prefix completion (the reply stops at the closing fence, which is not returned)
    "Please write quick sort code": [
        "def quick_sort(arr):\n",
        "    return arr\n",
        "```",
        "\nmore",
    ],
    # FIM: the key is the middle marker, the last token of every FIM prompt
    "<|fim_middle|>": ["\n    if a <= 1:\n", "        return a\n"],
    # `seekserve chat` and LangChain
    "remember the number seven": ["Noted", ":", " seven", "."],
    "what number did I say": ["You", " said", " seven", "."],
    "weather in Paris": ["Let me check.", "\n\n", *WEATHER_CALL],
}


def with_fim_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` plus Qwen2.5-Coder's three FIM markers as special tokens (new ids)."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in FIM_TOKENS])
    return Tokenizer(
        backend,
        eos_token_ids=tokenizer.eos_token_ids,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        chat_template=tokenizer.chat_template,
    )


@pytest.fixture(scope="session")
def client_tokenizer(smollm2_gguf: Path) -> Tokenizer:
    return with_fim_tokens(Tokenizer.from_gguf(smollm2_gguf))


@pytest.fixture(scope="session")
def client_configs(tmp_path_factory: pytest.TempPathFactory, client_tokenizer: Tokenizer) -> list:
    root = tmp_path_factory.mktemp("client-models")
    chat = build_scripted_model(root / "chat", client_tokenizer, {**CHAT_SCRIPTS, **DOCS_SCRIPTS})
    reasoner = build_scripted_model(
        root / "reasoner", client_tokenizer, REASONER_SCRIPTS, chat_template=R1_TEMPLATE
    )
    return [
        engine_config(chat, num_blocks=512),
        engine_config(reasoner, num_blocks=256, served_model_name="deepseek-reasoner"),
    ]


@pytest.fixture(scope="session")
def server(client_configs: list) -> Iterator[LiveServer]:
    """The scripted models on 127.0.0.1 (no API key; clients send any)."""
    with live_server(create_app(ServerConfig(), client_configs)) as live:
        yield live
