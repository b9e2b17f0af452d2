"""logprobs / top_logprobs on the wire (spec §3, §4): values from the model's distribution,
exact token bytes, the same entries in JSON and SSE."""

from __future__ import annotations

import json

import pytest

from tests.api.helpers import CHAT, chat_body

QUESTION = [{"role": "user", "content": "Describe the Moon in one sentence, please."}]


def entries_of_stream(client, body) -> tuple[list[dict], list[dict]]:
    response = client.post(CHAT, json={**body, "stream": True})
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    entries = []
    for chunk in chunks[1:]:
        logprobs = chunk["choices"][0]["logprobs"]
        assert logprobs is not None and set(logprobs) == {"content"}
        entries.extend(logprobs["content"])
    return chunks, entries


def test_greedy_logprobs_shape_and_values(client):
    body = chat_body(messages=QUESTION, max_tokens=12, logprobs=True, top_logprobs=3)
    data = client.post(CHAT, json=body).json()
    choice = data["choices"][0]
    entries = choice["logprobs"]["content"]
    assert choice["finish_reason"] == "length"
    assert len(entries) == data["usage"]["completion_tokens"] == 12
    for entry in entries:
        assert list(entry) == ["token", "logprob", "bytes", "top_logprobs"]
        top = entry["top_logprobs"]
        assert len(top) == 3 and all(list(t) == ["token", "logprob", "bytes"] for t in top)
        # greedy picks the most likely token: it is top_logprobs[0]
        assert (top[0]["token"], top[0]["logprob"], top[0]["bytes"]) == (
            entry["token"],
            entry["logprob"],
            entry["bytes"],
        )
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert entry["logprob"] <= 0.0
    # (the tiny random model's bytes need not form valid UTF-8; the real-model test in
    # test_seed_real_model.py checks that the bytes rebuild the text exactly)
    for entry in entries:
        raw = bytes(entry["bytes"])
        try:
            assert raw.decode("utf-8") == entry["token"]
        except UnicodeDecodeError:  # part of a character: shown with U+FFFD
            assert "\ufffd" in entry["token"]


def test_stream_carries_the_same_entries(client):
    body = chat_body(messages=QUESTION, max_tokens=12, logprobs=True, top_logprobs=2)
    expected = client.post(CHAT, json=body).json()["choices"][0]["logprobs"]["content"]
    chunks, entries = entries_of_stream(client, body)
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk
    assert entries == expected


@pytest.mark.parametrize("fields", [{}, {"logprobs": False}])
def test_no_logprobs_unless_asked(client, fields):
    data = client.post(CHAT, json=chat_body(messages=QUESTION, **fields)).json()
    assert data["choices"][0]["logprobs"] is None


def test_top_logprobs_default_to_none_listed(client):
    body = chat_body(messages=QUESTION, max_tokens=3, logprobs=True)
    entries = client.post(CHAT, json=body).json()["choices"][0]["logprobs"]["content"]
    assert len(entries) == 3 and all(entry["top_logprobs"] == [] for entry in entries)
