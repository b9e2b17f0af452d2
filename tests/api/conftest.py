"""Fixtures of the HTTP tests: one open server (TestClient) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from tests.conftest import engine_config


@pytest.fixture(scope="module")
def client(tiny_chat_model_dir: Path) -> Iterator[TestClient]:
    """The tiny chat model as deepseek-chat, no API keys; shared by a module's tests (they
    leave the engine idle, which `assert_still_serving` checks)."""
    config = engine_config(tiny_chat_model_dir, num_blocks=256)
    with TestClient(create_app(ServerConfig(), [config])) as test_client:
        yield test_client
