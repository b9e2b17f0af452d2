"""Keys, balances and limits at the API: who may call, whether they may start another
request, and what a finished request costs them.

    check_api_key (state.py) ─► Accounts.authenticate: ledger keys, else static --api-key keys
    route ─► Accounts.admit: 402 if the key's balance is spent, 429 over its concurrency
          ─► response runs ─► slot released when the response is done (however it ends)
    Generation ends ─► Accounts.charge: a usage row + deduction, on the writer's thread
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from seekserve.accounts.ledger import KeyRecord, Ledger, UsageRow, UsageWriter
from seekserve.accounts.limits import ConcurrencyLimiter
from seekserve.accounts.prices import Prices, nano_to_usd_text
from seekserve.errors import InsufficientBalance
from seekserve.usage import cache_hit_tokens


@dataclass
class Accounts:
    ledger: Ledger | None = None
    writer: UsageWriter | None = None
    static_keys: tuple[str, ...] = ()
    billing: bool = True
    """With a ledger: charge usage and refuse spent keys (False: keys only)."""
    concurrency_limit: int | None = None
    """Requests in flight per key (a ledger key's own limit wins); None: unlimited."""
    limiter: ConcurrencyLimiter = field(default_factory=ConcurrencyLimiter)

    @property
    def requires_key(self) -> bool:
        return self.ledger is not None or bool(self.static_keys)

    def authenticate(self, key: str) -> KeyRecord | bool:
        """A ledger key's record, True for a static key, False for neither."""
        if self.ledger is not None:
            record = self.ledger.authenticate(key)
            if record is not None:
                return record
        # compare against every static key, in constant time per key
        matches = [hmac.compare_digest(key.encode(), k.encode()) for k in self.static_keys]
        return any(matches)

    def admit(self, request: Request) -> Callable[[], None]:
        """Count the request against its key (429 over the limit; 402 when its balance is
        spent); returns the release to call once its response is done."""
        key = getattr(request.state, "api_key", None)
        if key is None:
            return _nothing
        record = getattr(request.state, "key_record", None)
        # a ledger key's record was read by this request's authentication: no second read
        if record is not None and self.billing and record.total_nano <= 0:
            raise InsufficientBalance()
        limit = self.concurrency_limit
        if record is not None and record.concurrency_limit is not None:
            limit = record.concurrency_limit
        if limit is None:
            return _nothing
        self.limiter.acquire(key, limit)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.limiter.release(key)

        return release

    def charge(
        self,
        request_state: Any,
        model: str,
        prices: Prices,
        request_id: str,
        num_prompt_tokens: int,
        num_cached_tokens: int,
        num_output_tokens: int,
    ) -> None:
        """Queue the usage row of a finished (or aborted) request of a ledger key."""
        record = getattr(request_state, "key_record", None)
        if record is None or self.writer is None or not self.billing:
            return
        hit = cache_hit_tokens(num_cached_tokens)
        miss = num_prompt_tokens - hit
        cost = prices.cost_nano(hit, miss, num_output_tokens)
        self.writer.submit(
            UsageRow(record.id, request_id, model, hit, miss, num_output_tokens, cost, time.time())
        )

    def balance(self, request: Request) -> dict[str, Any]:
        """`GET /user/balance` (spec §10) for the calling key."""
        record = getattr(request.state, "key_record", None)
        if record is None or self.ledger is None:  # no ledger: nothing is charged
            return {"is_available": True, "balance_infos": []}
        available = record.total_nano > 0 or not self.billing
        return {
            "is_available": available,
            "balance_infos": [
                {
                    "currency": "USD",
                    "total_balance": nano_to_usd_text(record.total_nano),
                    "granted_balance": nano_to_usd_text(record.granted_nano),
                    "topped_up_balance": nano_to_usd_text(record.topped_up_nano),
                }
            ],
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.ledger is not None:
            self.ledger.close()


def _nothing() -> None:
    pass


class ReleasingResponse(Response):
    """Runs `on_done` once the wrapped response has been sent, cut short, or failed — the end
    of a request as concurrency counts it (a stream ends with its last byte)."""

    def __init__(self, inner: Response, on_done: Callable[[], None]) -> None:
        self.inner = inner
        self.on_done = on_done
        self.background = None
        self.status_code = inner.status_code

    @property
    def headers(self):  # type: ignore[override]
        return self.inner.headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.on_done()
