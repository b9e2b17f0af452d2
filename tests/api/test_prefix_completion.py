"""Chat prefix completion (beta, spec §8.3): the reply continues the last assistant message,
which is not repeated in it."""

from __future__ import annotations

import json

from seekserve.llm import LLM
from seekserve.sampling_params import SamplingParams
from tests.api.helpers import CHAT, chat_body

USER = {"role": "user", "content": "Write a quicksort in Python."}
PREFIX = "```python\ndef quicksort("


def test_reply_continues_the_prefix_without_repeating_it(client, tiny_chat_model_dir):
    served = client.app.state.seekserve.models["deepseek-chat"]
    body = chat_body(
        messages=[USER, {"role": "assistant", "content": PREFIX, "prefix": True}],
        max_tokens=8,
    )
    response = client.post("/beta" + CHAT, json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    # the prompt is the rendered conversation before the prefix, then the prefix itself
    prompt = served.chat_template.render([USER]) + PREFIX
    assert data["usage"]["prompt_tokens"] == len(served.tokenizer.encode(prompt))
    llm = LLM(
        str(tiny_chat_model_dir),
        dtype="float32",
        block_size=4,
        num_blocks=256,
        max_num_batched_tokens=32,
        max_num_seqs=8,
    )
    [expected] = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))
    assert data["choices"][0]["message"]["content"] == expected.text


def test_stream_and_json_agree(client):
    body = chat_body(
        messages=[USER, {"role": "assistant", "content": PREFIX, "prefix": True}],
        max_tokens=8,
    )
    expected = client.post("/beta" + CHAT, json=body).json()["choices"][0]["message"]["content"]
    response = client.post("/beta" + CHAT, json={**body, "stream": True})
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected
