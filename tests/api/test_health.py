"""/health: "ready" with the models; with background loading, "loading" (503, API answers
503) until the engines run, or "failed" with the load error."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from seekserve.llm import ModelFiles
from tests.api.helpers import CHAT, MODEL, assert_error, chat_body
from tests.conftest import engine_config

LOADING = "Server Overloaded: the model is loading, retry in a few seconds"
FAILED = "Server Overloaded: the model failed to load (see /health)"


def wait_for_health(client: TestClient, timeout_s: float = 30.0) -> dict:
    """The first /health body that is not "loading" (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while (body := client.get("/health").json())["status"] == "loading":
        assert time.monotonic() < deadline, "still loading"
        time.sleep(0.02)
    return body


def test_background_loading_answers_loading_then_ready(
    tiny_chat_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    may_load = threading.Event()
    build_engine = ModelFiles.build_engine

    def slow_build(files: ModelFiles):
        assert may_load.wait(timeout=30)
        return build_engine(files)

    monkeypatch.setattr(ModelFiles, "build_engine", slow_build)
    app = create_app(ServerConfig(load_in_background=True), [engine_config(tiny_chat_model_dir)])
    try:
        with TestClient(app) as client:
            response = client.get("/health")
            assert (response.status_code, response.json()) == (503, {"status": "loading"})
            response = client.post(CHAT, json=chat_body())
            assert_error(response, 503, LOADING, error_type="server_overloaded")
            assert response.headers["retry-after"] == "5"
            metrics = client.get("/metrics")  # scrapes work meanwhile, and count the 503
            assert metrics.status_code == 200
            assert (
                'seekserve_requests_total{route="/chat/completions",status="503"} 1.0'
                in metrics.text
            )
            may_load.set()
            assert wait_for_health(client) == {"status": "ready", "models": [MODEL]}
            assert client.get("/health").status_code == 200
            assert client.post(CHAT, json=chat_body()).status_code == 200
    finally:
        may_load.set()


def test_background_load_failure_is_reported(
    tiny_chat_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    def broken_build(_: ModelFiles):
        raise RuntimeError("weights are corrupt")

    monkeypatch.setattr(ModelFiles, "build_engine", broken_build)
    app = create_app(ServerConfig(load_in_background=True), [engine_config(tiny_chat_model_dir)])
    with TestClient(app) as client:
        body = wait_for_health(client)
        assert body == {"status": "failed", "error": "RuntimeError: weights are corrupt"}
        assert client.get("/health").status_code == 503
        assert_error(
            client.post(CHAT, json=chat_body()), 503, FAILED, error_type="server_overloaded"
        )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "RuntimeError: weights are corrupt" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_foreground_load_failure_fails_the_start(
    tiny_chat_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    def broken_build(_: ModelFiles):
        raise RuntimeError("weights are corrupt")

    monkeypatch.setattr(ModelFiles, "build_engine", broken_build)
    app = create_app(ServerConfig(), [engine_config(tiny_chat_model_dir)])
    with pytest.raises(RuntimeError, match="weights are corrupt"), TestClient(app):
        pass
