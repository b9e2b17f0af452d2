"""The seed document's request, sent verbatim to the real default model (SmolLM2 GGUF),
answers with every field of the seed's response schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

SEED = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "spec"
    / ("seed-create-chat-completion.txt")
)


def _seed_documents() -> tuple[dict[str, Any], dict[str, Any]]:
    text = SEED.read_text()
    request = json.loads(re.search(r"--data '\n(.*?)\n'", text, re.S).group(1))
    decoder = json.JSONDecoder()
    start = text.index("{", text.index("'\n", text.index("--data '") + 9))
    response, _ = decoder.raw_decode(text[start:])
    return request, response


def _paths(obj: Any, prefix: str = "") -> set[str]:
    """Every key path of the seed's example response ("choices[].message.content", ...)."""
    paths: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= _paths(value, path)
    elif isinstance(obj, list) and obj:
        paths |= _paths(obj[0], f"{prefix}[]")
    return paths


def _lookup(obj: Any, path: str) -> list[Any]:
    values = [obj]
    for part in path.split("."):
        is_list = part.endswith("[]")
        key = part.removesuffix("[]")
        values = [v[key] for v in values if isinstance(v, dict) and key in v]
        if is_list:
            values = [item for v in values if isinstance(v, list) for item in v]
    return values


@pytest.fixture(scope="module")
def real_client(smollm2_gguf: Path):
    from fastapi.testclient import TestClient

    from seekserve.api.app import create_app
    from seekserve.config import CacheConfig, EngineConfig, ModelConfig, ServerConfig

    config = EngineConfig(
        model=ModelConfig(model=str(smollm2_gguf)),
        cache=CacheConfig(kv_cache_memory_bytes=256 << 20),
    )
    with TestClient(create_app(ServerConfig(), [config])) as client:
        yield client


@pytest.mark.skipif(not SEED.is_file(), reason="the shared spec folder is not beside the repo")
def test_seed_request_returns_every_field_of_the_seed_response(real_client):
    request, example = _seed_documents()
    assert request["model"] == "deepseek-chat" and request["max_tokens"] == 2048
    response = real_client.post("/chat/completions", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    # logprobs is null unless requested (spec §3), so its inner fields are not expected
    required = {p for p in _paths(example) if not p.startswith("choices[].logprobs.")}
    # tool_calls is an empty list without tools: its item fields cannot appear
    required = {p for p in required if not p.startswith("choices[].message.tool_calls[].")}
    missing = sorted(p for p in required if not _lookup(body, p))
    assert missing == []
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == "deepseek-chat"
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    usage = body["usage"]
    assert (
        usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
        == (usage["prompt_tokens"])
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_logprobs_on_the_real_model(real_client):
    body = {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "Name the planets of the solar system."}],
        # 8 tokens: "The planets of the solar system are:". The 9th is a tie in bf16 between
        # "\n\n" and " Earth" (logprob -1.6764 each with oneDNN's sums), which any change in
        # the order of a sum may break either way
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
    }
    choice = real_client.post("/chat/completions", json=body).json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == 8 and choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "The planets of the solar system are:"
    joined = b"".join(bytes(entry["bytes"]) for entry in entries)
    assert joined.decode("utf-8") == choice["message"]["content"]
    for entry in entries:
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
        assert bytes(entry["bytes"]).decode("utf-8") == entry["token"]
