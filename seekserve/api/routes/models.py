"""`GET /models` and `GET /models/{id}` (spec §9), also under /v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from seekserve.api.state import AuthDep, StateDep
from seekserve.errors import NotFound

router = APIRouter(dependencies=[AuthDep])


def _card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "owned_by": "deepseek"}


@router.get("/models")
@router.get("/v1/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    return {"object": "list", "data": [_card(name) for name in state.models]}


@router.get("/models/{model_id}")
@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, state: StateDep) -> dict[str, Any]:
    if model_id not in state.models:
        raise NotFound(f"Model Not Exist: {model_id!r}", param="model")
    return _card(model_id)
