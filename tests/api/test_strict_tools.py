"""Strict function calling (beta, spec §8.6): every function strict, schemas inside
DeepSeek's subset (checked up front, the 400 names the keyword), arguments generated under
the schema's grammar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seekserve.api.app import create_app
from seekserve.api.tool_schema import check_strict_schema
from seekserve.config import ServerConfig
from seekserve.errors import InvalidRequest
from seekserve.output.tool_calls import tool_call_id
from seekserve.prompt.tokenizer import Tokenizer
from tests.api.helpers import CHAT, assert_error, wait_until_idle
from tests.api.scripted_chat import scripted_configs

BETA = "/beta/chat/completions"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def strict_tool(name: str = "get_weather", parameters: Any = CITY, strict: bool = True) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "parameters": parameters, "strict": strict},
    }


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[TestClient]:
    configs = scripted_configs(tmp_path_factory.mktemp("strict"), Tokenizer.from_gguf(smollm2_gguf))
    with TestClient(create_app(ServerConfig(), configs)) as test_client:
        yield test_client


def body(user: str, tools: list[dict], **fields: Any) -> dict[str, Any]:
    return {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": user}],
        "tools": tools,
        "temperature": 0,
        "max_tokens": 40,
        **fields,
    }


def test_strict_call_on_beta(client):
    response = client.post(BETA, json=body("split please", [strict_tool()]))
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["choices"][0]["message"]["tool_calls"] == [
        {
            "index": 0,
            "id": tool_call_id(out["id"], 0),
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]


def test_strict_arguments_follow_the_schema(client):
    """The script writes {"city": 5}; under strict the grammar allows only a string."""
    tools = [strict_tool()]
    loose = client.post(CHAT, json=body("bad args please", tools)).json()  # not beta: ignored
    assert loose["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == (
        '{"city": 5}'
    )
    strict = client.post(BETA, json=body("bad args please", tools)).json()
    arguments = strict["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert arguments.startswith('{"city": "'), arguments


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        (
            [strict_tool(), strict_tool("get_time", strict=False)],
            "Invalid tools value: in strict mode every function must set strict to true "
            "('get_time' does not)",
        ),
        (
            [
                strict_tool(
                    parameters={**CITY, "properties": {"city": {"type": "string", "minLength": 2}}}
                )
            ],
            "Invalid tools[0].function.parameters value: keyword 'minLength' is not supported "
            "in strict mode (at properties.city)",
        ),
        (
            [
                strict_tool(
                    parameters={k: v for k, v in CITY.items() if k != "additionalProperties"}
                )
            ],
            "Invalid tools[0].function.parameters value: an object needs "
            "'additionalProperties': false in strict mode",
        ),
        (
            [strict_tool(parameters={**CITY, "required": []})],
            "Invalid tools[0].function.parameters value: property 'city' must be listed in "
            "'required' in strict mode",
        ),
    ],
    ids=["one-not-strict", "minLength", "additionalProperties", "required"],
)
def test_strict_schema_errors(client, tools, message):
    assert_error(client.post(BETA, json=body("split please", tools)), 400, message, "tools")
    assert client.post(BETA, json=body("split please", [strict_tool()])).status_code == 200
    wait_until_idle(client.app.state.seekserve.models["deepseek-chat"].engine.engine)


GOOD = [
    CITY,
    {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 9, "multipleOf": 1},
            "x": {"type": "number", "exclusiveMinimum": 0, "default": 1.5},
            "tags": {"type": "array", "items": {"type": "string", "format": "email"}},
            "mode": {"type": "string", "enum": ["a", "b"], "description": "which"},
            "id": {"anyOf": [{"type": "string", "pattern": "^[a-z]+$"}, {"type": "null"}]},
            "author": {"$ref": "#/$def/author"},
        },
        "required": ["n", "x", "tags", "mode", "id", "author"],
        "additionalProperties": False,
        "$def": {
            "author": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "coauthor": {"$ref": "#/$def/author"}},
                "required": ["name", "coauthor"],
                "additionalProperties": False,
            }
        },
    },
]


@pytest.mark.parametrize("schema", GOOD)
def test_supported_subset_passes(schema):
    check_strict_schema(schema, "tools[0].function.parameters")


BAD = [
    ({"type": "array", "items": {"type": "string"}, "maxItems": 3}, "keyword 'maxItems'", ""),
    ({"type": "string", "maxLength": 3}, "keyword 'maxLength'", ""),
    ({"type": "string", "format": "date"}, "string format 'date'", ""),
    ({"type": "tuple"}, "type 'tuple'", ""),
    ({"allOf": [{"type": "string"}]}, "keyword 'allOf'", ""),
    (
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "required": ["a"],
            "additionalProperties": False,
            "patternProperties": {},
        },
        "keyword 'patternProperties'",
        "",
    ),
    ({"anyOf": [{"type": "string", "minLength": 1}]}, "keyword 'minLength'", "anyOf[0]"),
    (
        {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/x"}},
            "required": ["a"],
            "additionalProperties": False,
            "$defs": {"x": {"type": "integer", "foo": 1}},
        },
        "keyword 'foo'",
        "$defs.x",
    ),
    ("not a schema", "a schema must be a JSON object", ""),
]


@pytest.mark.parametrize(("schema", "reason", "where"), BAD)
def test_outside_the_subset_is_named(schema, reason, where):
    with pytest.raises(InvalidRequest) as error:
        check_strict_schema(schema, "tools[2].function.parameters")
    text = error.value.message
    assert text.startswith(f"Invalid tools[2].function.parameters value: {reason}")
    assert "in strict mode" in text
    if where:
        assert text.endswith(f"(at {where})")


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {
            "type": "object",
            "properties": {"a": schema},
            "required": ["a"],
            "additionalProperties": False,
        }
    return schema


def test_deeply_nested_schemas_are_refused_or_loosened(client):
    """Hostile nesting: strict → a 400 naming the limit; not strict → the forced call keeps
    its shape with free JSON arguments (never a 5xx)."""
    strict = [strict_tool(parameters=_nested(40))]
    response = client.post(BETA, json=body("split please", strict))
    assert response.status_code == 400
    assert "nested deeper than 32 levels" in response.json()["error"]["message"]
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(70):
        deep = {"type": "array", "items": deep}
    parameters = {"type": "object", "properties": {"city": {"type": "string"}, "x": deep}}
    loose = [strict_tool(parameters=parameters, strict=False)]
    response = client.post(CHAT, json=body("split please", loose, tool_choice="required"))
    assert response.status_code == 200, response.text
    [call] = response.json()["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], call["function"]["arguments"]) == (
        "get_weather",
        '{"city": "Paris"}',
    )
