"""Keys, balances and limits over HTTP: 401 / 402 / 429 / 503 / 413 bodies, usage charged
exactly as reported to clients, `GET /user/balance` in DeepSeek's shape."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seekserve.accounts.ledger import Ledger
from seekserve.accounts.prices import Prices, usd_to_nano
from seekserve.api.app import create_app
from seekserve.config import ServerConfig
from tests.api.helpers import CHAT, assert_error, chat_body, engine_of, wait_until_idle
from tests.conftest import engine_config


@pytest.fixture
def serve(tmp_path: Path, tiny_chat_model_dir: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def start(prices: dict[str, float] | None = None, **server: Any) -> tuple[TestClient, Ledger]:
        ledger_path = tmp_path / "ledger.db"
        config = ServerConfig(ledger_path=str(ledger_path), **server)
        model = engine_config(tiny_chat_model_dir, **(prices or {}))
        client = TestClient(create_app(config, [model]))
        client.__enter__()
        clients.append(client)
        return client, Ledger(ledger_path)

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def flush(client: TestClient) -> None:
    assert client.app.state.seekserve.accounts.writer.flush()


def test_ledger_keys_authenticate(serve):
    client, ledger = serve()
    key, record = ledger.create_key("alice", topped_up_nano=usd_to_nano("1"))
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200
    bad = key[:-4] + "zzzz"
    assert_error(
        client.post(CHAT, json=chat_body(), headers=bearer(bad)),
        401,
        "Authentication Fails, Your api key: ****zzzz is invalid",
        error_type="authentication_error",
    )
    ledger.revoke(record.id)
    response = client.post(CHAT, json=chat_body(), headers=bearer(key))
    assert response.status_code == 401


def test_usage_is_charged_as_reported(serve):
    """Every usage row equals what its client was told; the balance drops by their cost."""
    client, ledger = serve()
    key, record = ledger.create_key("bob", granted_nano=1000, topped_up_nano=usd_to_nano("5"))
    reported = []
    for index in range(3):
        body = chat_body(max_tokens=4 + index, messages=[{"role": "user", "content": "Hi " * 40}])
        reported.append(client.post(CHAT, json=body, headers=bearer(key)).json()["usage"])
    stream = client.post(
        CHAT, json={**chat_body(max_tokens=3), "stream": True}, headers=bearer(key)
    )
    reported.append(
        next(
            json.loads(line[6:])["usage"]
            for line in reversed(stream.text.split("\n\n"))
            if line.startswith("data: {")
        )
    )
    fim = client.post(
        "/beta/completions",
        json={"model": "deepseek-chat", "prompt": "Once", "max_tokens": 2},
        headers=bearer(key),
    )
    reported.append(fim.json()["usage"])
    flush(client)
    rows = ledger.usage_rows(record.id)
    assert [(r.hit_tokens, r.miss_tokens, r.output_tokens) for r in rows] == [
        (u["prompt_cache_hit_tokens"], u["prompt_cache_miss_tokens"], u["completion_tokens"])
        for u in reported
    ]
    assert any(r.hit_tokens for r in rows)  # the repeated prompt was a cache hit
    costs = [Prices().cost_nano(r.hit_tokens, r.miss_tokens, r.output_tokens) for r in rows]
    assert [r.cost_nano for r in rows] == costs
    after = ledger.key(record.id)
    spent = sum(costs)
    assert after.granted_nano == 0  # granted first
    assert after.topped_up_nano == usd_to_nano("5") - (spent - 1000)
    balance = client.get("/user/balance", headers=bearer(key)).json()
    total = f"{(usd_to_nano('5') + 1000 - spent) // 10**7 / 100:.2f}"
    assert balance == {
        "is_available": True,
        "balance_infos": [
            {
                "currency": "USD",
                "total_balance": total,
                "granted_balance": "0.00",
                "topped_up_balance": total,
            }
        ],
    }


def test_spent_key_gets_402(serve):
    client, ledger = serve()
    key, record = ledger.create_key("carol")  # no balance at all
    assert_error(
        client.post(CHAT, json=chat_body(), headers=bearer(key)),
        402,
        "Insufficient Balance",
        error_type="unknown_error",
    )
    assert client.get("/user/balance", headers=bearer(key)).json()["is_available"] is False
    ledger.top_up(record.id, granted_nano=1)  # granted balance counts
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200


def test_no_billing_mode_charges_nothing(serve):
    client, ledger = serve(billing=False)
    key, record = ledger.create_key("dave")
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200
    flush(client)
    assert ledger.usage_rows(record.id) == []


def _slow(client: TestClient, seconds: float) -> None:
    engine = engine_of(client)
    step = engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    engine.step = slow_step


def _in_background(client: TestClient, body: dict, headers: dict) -> threading.Thread:
    thread = threading.Thread(
        target=client.post, args=(CHAT,), kwargs={"json": body, "headers": headers}
    )
    thread.start()
    deadline = time.monotonic() + 5
    while client.app.state.seekserve.models["deepseek-chat"].engine.num_in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return thread


def test_concurrency_limit_gets_429(serve):
    client, ledger = serve(concurrency_limit=1)
    key, _ = ledger.create_key("erin", topped_up_nano=usd_to_nano("1"))
    _slow(client, 0.05)
    try:
        first = _in_background(client, chat_body(max_tokens=10), bearer(key))
        assert_error(
            client.post(CHAT, json=chat_body(), headers=bearer(key)),
            429,
            "Your current concurrency is 2, which exceeds your concurrency limit of 1. Please "
            "wait for a request to finish, or ask the operator to raise the limit.",
            error_type="rate_limit_error",
        )
        first.join()
    finally:
        del engine_of(client).step
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200
    assert client.app.state.seekserve.accounts.limiter.in_flight(key) == 0


def test_full_admission_queue_gets_503(serve):
    client, ledger = serve(max_queued_requests=1)
    key, _ = ledger.create_key("frank", topped_up_nano=usd_to_nano("1"))
    _slow(client, 0.05)
    try:
        first = _in_background(client, chat_body(max_tokens=10), bearer(key))
        assert_error(
            client.post(CHAT, json=chat_body(), headers=bearer(key)),
            503,
            "Server Overloaded",
            error_type="server_overloaded",
        )
        first.join()
    finally:
        del engine_of(client).step
    assert client.app.state.seekserve.accounts.limiter.in_flight(key) == 0
    wait_until_idle(engine_of(client))


def test_oversized_body_gets_413(serve):
    client, ledger = serve(max_body_bytes=2000)
    key, _ = ledger.create_key("gina", topped_up_nano=usd_to_nano("1"))
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    raw = json.dumps(big).encode()
    response = client.post(
        CHAT, content=raw, headers={**bearer(key), "content-type": "application/json"}
    )
    assert_error(
        response,
        413,
        f"Request body too large: {len(raw)} bytes or more, the limit is 2000 bytes",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"model": "deepseek-chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    response = client.post(
        CHAT, content=chunks(), headers={**bearer(key), "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"].startswith("Request body too large: ")
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200


def test_request_not_started_in_time_gets_503(serve):
    client, ledger = serve(start_deadline_s=0.2)
    key, _ = ledger.create_key("hank", topped_up_nano=usd_to_nano("1"))
    _slow(client, 0.5)  # the first token takes longer than the deadline
    try:
        assert_error(
            client.post(CHAT, json=chat_body(), headers=bearer(key)),
            503,
            "Server Overloaded: the request did not start within 0.2 s",
            error_type="server_overloaded",
        )
    finally:
        del engine_of(client).step
    wait_until_idle(engine_of(client))
    assert client.post(CHAT, json=chat_body(), headers=bearer(key)).status_code == 200


def test_balance_without_a_ledger_charges_nothing(client):
    """An open server (no ledger): the balance endpoint answers, nothing is ever owed."""
    assert client.get("/user/balance").json() == {"is_available": True, "balance_infos": []}


def test_a_models_own_prices_are_charged(serve):
    client, ledger = serve(
        prices={"price_cache_hit": 1.0, "price_cache_miss": 2.0, "price_output": 30.0}
    )
    key, record = ledger.create_key("ivy", topped_up_nano=usd_to_nano("1"))
    usage = client.post(CHAT, json=chat_body(max_tokens=3), headers=bearer(key)).json()["usage"]
    flush(client)
    [row] = ledger.usage_rows(record.id)
    assert row.cost_nano == (
        usage["prompt_cache_hit_tokens"] * 1000
        + usage["prompt_cache_miss_tokens"] * 2000
        + usage["completion_tokens"] * 30000
    )
