"""Schema-driven fuzzing (schemathesis) of every operation in `/openapi.json`: whatever the
generated body or path, the server answers below 500, errors in DeepSeek's envelope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from tests.api.helpers import engine_of, wait_until_idle
from tests.conftest import engine_config


@pytest.fixture(scope="module")
def app(tiny_chat_model_dir: Path) -> Iterator[FastAPI]:
    config = engine_config(tiny_chat_model_dir, num_blocks=256)
    application = create_app(ServerConfig(), [config])
    with TestClient(application):  # the lifespan: models loaded, engines running
        yield application


def test_no_server_errors(app):
    """Each operation in turn (schemathesis' own pytest plugin does not load under pytest 9,
    so the examples are drawn here with hypothesis directly)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples every run: CI stays reproducible
            database=None,
        )
        def call(case) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            if response.status_code >= 400 and response.headers.get("content-type") == (
                "application/json"
            ):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        call()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /chat/completions" in checked and "POST /beta/completions" in checked
    wait_until_idle(engine_of(TestClient(app)), timeout_s=30)
