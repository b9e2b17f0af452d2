"""One access line per request carrying the request's `x-ds-trace-id` (JSON logs), and the
startup summary of a model."""

from __future__ import annotations

import io
import json
import logging

import pytest

from seekserve.logging_setup import JsonFormatter
from tests.api.helpers import CHAT, MODEL, chat_body


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture):
    """Every record logged at INFO or above, as the JSON log writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.INFO, logger="seekserve")
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


def test_access_line_carries_the_trace_id_and_tokens(make_client, json_lines):
    client = make_client()
    response = client.post(CHAT, json=chat_body(max_tokens=3, ignore_eos=True))
    trace_id = response.headers["x-ds-trace-id"]
    lines = [line for line in json_lines() if line.get("request_id") == trace_id]
    assert [line["logger"] for line in lines] == ["seekserve.access"]
    (access,) = lines
    usage = response.json()["usage"]
    assert set(access) >= {"ts", "level", "logger", "msg"}
    assert access["level"] == "INFO"
    assert access | {"ts": None, "duration_s": None, "msg": None} == {
        "ts": None,
        "level": "INFO",
        "logger": "seekserve.access",
        "msg": None,
        "request_id": trace_id,
        "method": "POST",
        "path": CHAT,
        "status": 200,
        "duration_s": None,
        "model": MODEL,
        "completion_id": response.json()["id"],
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": 3,
        "cached_tokens": 0,
    }
    assert access["msg"].startswith(f"POST {CHAT} 200 ")
    assert access["duration_s"] > 0


def test_a_rejected_request_is_logged_once_with_its_status(make_client, json_lines):
    client = make_client()
    response = client.post(CHAT, json=chat_body(max_tokens=0))
    trace_id = response.headers["x-ds-trace-id"]
    (access,) = [line for line in json_lines() if line.get("request_id") == trace_id]
    assert (access["status"], access["path"]) == (400, CHAT)
    assert "model" not in access  # no generation started


def test_startup_summary_per_model(make_client, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="seekserve")
    make_client(num_blocks=256, block_size=4)
    (summary,) = [r for r in caplog.records if getattr(r, "kv_capacity_tokens", None)]
    assert summary.model == MODEL
    assert summary.architecture == "llama"
    assert summary.dtype == "float32"
    assert summary.kv_capacity_tokens == 256 * 4
    assert summary.kv_capacity_bytes > 0
    assert summary.num_parameters > 0
    assert summary.max_model_len == 1024
    assert summary.prefix_cache is True
    assert summary.disk_cache == "off"
    assert summary.listen == "http://127.0.0.1:8000"
    assert f"model {MODEL!r} ready" in summary.getMessage()
