"""`GET /health`: 200 "ready" once the models are loaded and the engines run; 503 "loading"
before (background loading), or 503 "failed" with the load error."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from seekserve.api.state import StateDep

router = APIRouter()


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    if state.status == "ready":
        return JSONResponse({"status": "ready", "models": list(state.models)})
    body = {"status": state.status}
    if state.load_error is not None:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=503)
