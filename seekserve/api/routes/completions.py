"""`POST /completions`: FIM completion, a beta-only endpoint (spec §7)."""

from __future__ import annotations

from fastapi import APIRouter

from seekserve.api.state import AuthDep
from seekserve.errors import InvalidRequest, NotSupported

router = APIRouter(dependencies=[AuthDep])

COMPLETIONS_NEED_BETA = (
    "completions api is only available when using beta api "
    '(set base_url="https://api.deepseek.com/beta")'
)


@router.post("/completions")
@router.post("/v1/completions")
async def completions() -> None:
    raise InvalidRequest(COMPLETIONS_NEED_BETA)


@router.post("/beta/completions")
async def beta_completions() -> None:
    raise NotSupported("FIM completion (/beta/completions) is not supported yet")
