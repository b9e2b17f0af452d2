"""JSON Output (spec §8.5): response_format json_object always parses, on a random model
too (the grammar, not the model, guarantees it), in JSON and SSE."""

from __future__ import annotations

import json

import pytest

from tests.api.helpers import CHAT, chat_body

TOPICS = ["a cat", "the weather", "a book", "a city", "a planet"]


@pytest.mark.parametrize("topic", TOPICS)
def test_random_model_output_parses_as_a_json_object(client, topic):
    body = chat_body(
        messages=[{"role": "user", "content": f"Describe {topic} as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=1.0,
    )
    data = client.post(CHAT, json=body).json()
    choice = data["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:  # ran out of tokens: a prefix of an object
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"].startswith("{")


def test_stream_text_equals_the_json_response(client):
    body = chat_body(
        messages=[{"role": "user", "content": "Reply in json."}],
        response_format={"type": "json_object"},
        max_tokens=200,
    )
    expected = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    response = client.post(CHAT, json={**body, "stream": True})
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected
