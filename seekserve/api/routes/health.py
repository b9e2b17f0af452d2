"""`GET /health`: 200 once the models are loaded and the engines run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from seekserve.api.state import StateDep

router = APIRouter()


@router.get("/health")
async def health(state: StateDep) -> dict[str, Any]:
    return {"status": "ok", "models": list(state.models)}
