"""`GET /user/balance` (spec §10): the calling key's balance, in DeepSeek's shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from seekserve.api.state import AuthDep, StateDep

router = APIRouter(dependencies=[AuthDep])


@router.get("/user/balance")
@router.get("/v1/user/balance")
async def user_balance(request: Request, state: StateDep) -> dict[str, Any]:
    assert state.accounts is not None
    return state.accounts.balance(request)
