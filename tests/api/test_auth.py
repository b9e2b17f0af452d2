"""Bearer-key authentication (spec §1, §13.2): 401 texts, which routes need a key."""

from __future__ import annotations

import pytest

from tests.api.helpers import CHAT, MODEL, assert_error, assert_still_serving, chat_body

KEY = "sk-test-1234"
GOOD = {"Authorization": f"Bearer {KEY}"}
BAD_HEADER = "Authentication Fails (auth header format should be Bearer sk-...)"


@pytest.fixture
def client(make_client):
    return make_client(api_keys=(KEY,))


def _assert_401(response, message: str) -> None:
    assert_error(response, 401, message, error_type="authentication_error")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": ""}, id="empty-header"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-key"),
        pytest.param({"Authorization": "Bearer   "}, id="bearer-blank-key"),
        pytest.param({"Authorization": KEY}, id="key-without-scheme"),
        pytest.param({"Authorization": f"Basic {KEY}"}, id="basic-scheme"),
        pytest.param({"x-api-key": KEY}, id="x-api-key-header"),
    ],
)
def test_missing_or_malformed_header(client, headers):
    _assert_401(client.post(CHAT, json=chat_body(), headers=headers), BAD_HEADER)
    assert_still_serving(client, GOOD)


@pytest.mark.parametrize(
    ("key", "shown"),
    [("sk-wrong-9999", "9999"), (KEY + "5", "2345"), ("abc", "abc")],
)
def test_wrong_key_shows_its_last_four_characters(client, key, shown):
    response = client.post(CHAT, json=chat_body(), headers={"Authorization": f"Bearer {key}"})
    _assert_401(response, f"Authentication Fails, Your api key: ****{shown} is invalid")
    assert_still_serving(client, GOOD)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_right_key(client, scheme):
    headers = {"Authorization": f"{scheme} {KEY}"}
    response = client.post(CHAT, json=chat_body(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


def test_any_configured_key_is_accepted(make_client):
    client = make_client(api_keys=("sk-first-0001", KEY))
    for key in ("sk-first-0001", KEY):
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post(CHAT, json=chat_body(), headers=headers).status_code == 200
    _assert_401(
        client.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer sk-x-0002"}),
        "Authentication Fails, Your api key: ****0002 is invalid",
    )


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": [MODEL]}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("GET", "/v1/models"),
        ("GET", "/models/deepseek-chat"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/beta/chat/completions"),
        ("POST", "/completions"),
        ("POST", "/beta/completions"),
    ],
)
def test_every_api_route_needs_the_key(client, method, path):
    _assert_401(client.request(method, path, json=chat_body()), BAD_HEADER)
    assert_still_serving(client, GOOD)


def test_models_with_the_key(client):
    response = client.get("/models", headers=GOOD)
    assert response.status_code == 200
    assert response.json()["data"] == [{"id": MODEL, "object": "model", "owned_by": "deepseek"}]


def test_key_is_checked_before_the_body(client):
    """An unauthenticated request learns nothing about validation."""
    response = client.post(CHAT, content=b"not json", headers={"Authorization": "Bearer sk-no"})
    _assert_401(response, "Authentication Fails, Your api key: ****k-no is invalid")
    response = client.post(CHAT, content=b"not json", headers=GOOD)
    assert_error(
        response,
        400,
        "Failed to parse the request body as JSON: Expecting value at line 1 column 1",
    )
    assert_still_serving(client, GOOD)


def test_stream_with_the_key(client):
    response = client.post(CHAT, json=chat_body(stream=True), headers=GOOD)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")


def test_open_server_needs_no_key(make_client):
    client = make_client()
    assert client.get("/models").status_code == 200
    headers = {"Authorization": "Bearer anything"}
    assert client.post(CHAT, json=chat_body(), headers=headers).status_code == 200
