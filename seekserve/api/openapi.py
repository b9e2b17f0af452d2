"""The OpenAPI document: the routes read raw bodies (to answer with DeepSeek's own error
texts), so their request schemas are added here from the wire models — for clients,
generated SDKs and schema-driven fuzzing."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from seekserve.api.protocol import ChatCompletionRequest, CompletionRequest

_BODIES = {
    "/chat/completions": ChatCompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/beta/chat/completions": ChatCompletionRequest,
    "/beta/completions": CompletionRequest,
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _build(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    _, defs = models_json_schema(
        [(model, "validation") for model in {*_BODIES.values()}],
        ref_template="#/components/schemas/{model}",
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    for path, model in _BODIES.items():
        operation = document["paths"].get(path, {}).get("post")
        if operation is None:
            continue
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    return document
