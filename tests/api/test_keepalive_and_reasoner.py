"""Keep-alive while a request is silent (spec §8.10): comments in streams, blank lines before
a non-stream body; and the deepseek-reasoner hint."""

from __future__ import annotations

import json
import time

from tests.api.helpers import CHAT, assert_error, chat_body


def test_silent_stream_gets_keepalive_comments_then_the_same_text(make_client):
    client = make_client(keepalive_interval_s=0.02)
    body = chat_body(max_tokens=3)
    expected = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    engine = client.app.state.seekserve.models["deepseek-chat"].engine.engine
    step = engine.step

    def slow_step():
        time.sleep(0.1)  # every step outlasts the keep-alive interval
        return step()

    engine.step = slow_step
    try:
        response = client.post(CHAT, json={**body, "stream": True})
    finally:
        del engine.step
    events = [e for e in response.text.split("\n\n") if e]
    assert ": keep-alive" in events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == expected


def test_reasoner_without_a_thinking_model_says_how_to_configure_one(client):
    response = client.post(CHAT, json=chat_body(model="deepseek-reasoner"))
    assert_error(
        response,
        400,
        "Model Not Exist (no thinking model is configured on this server; serve one with "
        "`seekserve serve --model PATH --served-model-name deepseek-reasoner`)",
        "model",
    )


def _slow_steps(client, seconds: float):
    engine = client.app.state.seekserve.models["deepseek-chat"].engine.engine
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    engine.step = slow_step
    return engine


def test_slow_non_stream_gets_blank_lines_then_the_same_body(make_client):
    """Blank lines while the answer is not ready (spec §8.10: DeepSeek writes empty lines
    before the JSON body); leading whitespace keeps the body valid JSON."""
    client = make_client(keepalive_interval_s=0.02)
    body = chat_body(max_tokens=3)
    fast = client.post(CHAT, json=body)
    assert fast.text.startswith("{")  # quick answers are plain JSON responses
    engine = _slow_steps(client, 0.1)
    try:
        response = client.post(CHAT, json=body)
    finally:
        del engine.step
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    leading = response.text[: len(response.text) - len(response.text.lstrip("\n"))]
    assert len(leading) >= 2 and set(leading) == {"\n"}
    slow = response.json()
    assert slow["choices"] == fast.json()["choices"]
    assert slow["usage"]["completion_tokens"] == 3


def test_error_after_blank_lines_is_the_envelope_in_the_body(make_client):
    client = make_client(keepalive_interval_s=0.02)
    engine = client.app.state.seekserve.models["deepseek-chat"].engine.engine

    def failing_step():
        time.sleep(0.1)
        raise RuntimeError("boom")

    engine.step = failing_step
    try:
        response = client.post(CHAT, json=chat_body(max_tokens=3))
    finally:
        del engine.step
    assert response.text.startswith("\n")
    assert response.json() == {
        "error": {
            "message": "Server Error: an internal error occurred",
            "type": "server_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }
