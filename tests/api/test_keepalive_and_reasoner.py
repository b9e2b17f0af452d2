"""Keep-alive comments while a stream is silent (spec §8.10) and the deepseek-reasoner hint."""

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
