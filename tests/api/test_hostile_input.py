"""Untrusted model files and hostile requests: a chat template that reaches for Python
internals renders nothing harmful, a malformed GGUF is refused at start with a clear error,
and oversized or pathological requests get 4xx."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from tests.api.helpers import CHAT, assert_error, assert_still_serving, chat_body
from tests.conftest import engine_config


def test_malicious_template_fails_safe(tiny_chat_model_dir: Path, tmp_path: Path):
    sentinel = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_chat_model_dir, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = (
        "{{ raise_exception.__globals__['os'].system('touch " + str(sentinel) + "') }}"
        "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    )
    config_path.write_text(json.dumps(tokenizer_config))
    with TestClient(create_app(ServerConfig(), [engine_config(model_dir)])) as client:
        response = client.post(CHAT, json=chat_body())
        assert response.status_code == 400
        assert response.json()["error"]["message"] == (
            "Invalid messages value: chat template failed to render: access to attribute "
            "'__globals__' of 'function' object is unsafe."
        )
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [("garbage", b"hello world" * 100), ("empty", b""), ("truncated", None)],
)
def test_malformed_gguf_is_refused_at_start(tmp_path: Path, smollm2_gguf: Path, name, content):
    if content is None:
        with smollm2_gguf.open("rb") as file:
            content = file.read(5000)
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(content)
    app = create_app(ServerConfig(), [engine_config(path)])
    with pytest.raises(ValueError, match=f"{path} is not a readable GGUF file"), TestClient(app):
        pass


def test_pathological_requests_get_4xx(client):
    assert_error(
        client.post(CHAT, json=chat_body(stop=["x" * 1025])),
        400,
        "Invalid stop value, a stop sequence may be at most 1024 characters (got 1025)",
        "stop",
    )
    long_stops = ["ab" * 512] * 16  # the largest allowed: held-back text stays bounded
    response = client.post(CHAT, json=chat_body(stop=long_stops, max_tokens=8))
    assert response.status_code == 200
    bomb = b'{"model": "deepseek-chat", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post(CHAT, content=bomb, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["error"]["message"]
    assert_still_serving(client)
