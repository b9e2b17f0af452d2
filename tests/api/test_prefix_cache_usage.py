"""Prefix-cache accounting on the wire: DeepSeek's 64-token units, equal in JSON and SSE,
isolated per API key unless shared."""

from __future__ import annotations

import json

from tests.api.helpers import MODEL

LONG_SYSTEM = "You answer questions about the solar system in detail. " * 20


def chat(client, question: str, key: str | None = None, stream: bool = False) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": LONG_SYSTEM},
            {"role": "user", "content": question},
        ],
        "max_tokens": 2,
        "temperature": 0,
        "stream": stream,
    }
    response = client.post("/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()["usage"]
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    return chunks[-1]["usage"]


def assert_consistent(usage: dict) -> None:
    hit = usage["prompt_cache_hit_tokens"]
    assert hit % 64 == 0
    assert hit + usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": hit}


def test_second_request_hits_in_64_token_units_stream_and_not(make_client):
    client = make_client()
    cold = chat(client, "What is the largest planet?")
    assert cold["prompt_cache_hit_tokens"] == 0
    warm = chat(client, "What is the smallest planet?")
    stream = chat(client, "What is the hottest planet?", stream=True)
    for usage in (cold, warm, stream):
        assert_consistent(usage)
    # the system prompt and the chat template's prefix are shared, the question is not
    assert warm["prompt_tokens"] - 64 < warm["prompt_cache_hit_tokens"] < warm["prompt_tokens"]
    assert stream["prompt_cache_hit_tokens"] == warm["prompt_cache_hit_tokens"]


def test_each_api_key_has_its_own_cache_unless_shared(make_client):
    isolated = make_client(api_keys=("sk-alice-0001", "sk-bob-0002"))
    chat(isolated, "Warm up.", key="sk-alice-0001")
    assert chat(isolated, "Mars?", key="sk-bob-0002")["prompt_cache_hit_tokens"] == 0
    assert chat(isolated, "Venus?", key="sk-alice-0001")["prompt_cache_hit_tokens"] > 0

    shared = make_client(api_keys=("sk-alice-0001", "sk-bob-0002"), shared_prefix_cache=True)
    chat(shared, "Warm up.", key="sk-alice-0001")
    assert chat(shared, "Mars?", key="sk-bob-0002")["prompt_cache_hit_tokens"] > 0


def test_cache_off_never_reports_hits(make_client):
    client = make_client(enable_prefix_caching=False)
    chat(client, "Warm up.")
    assert chat(client, "Again.")["prompt_cache_hit_tokens"] == 0


def test_cache_salt_separates_scopes_within_a_key(make_client):
    client = make_client()
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": LONG_SYSTEM},
            {"role": "user", "content": "Saturn?"},
        ],
        "max_tokens": 1,
        "temperature": 0,
    }

    def hits(salt: str | None) -> int:
        extra = {} if salt is None else {"cache_salt": salt}
        response = client.post("/chat/completions", json={**body, **extra})
        return response.json()["usage"]["prompt_cache_hit_tokens"]

    assert hits("run-1") == 0
    assert hits("run-2") == 0
    assert hits(None) == 0  # no salt is a scope of its own too
    assert hits("run-1") > 0
