"""What the routes need from the running server, reached through `Annotated` dependencies."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, Request

from seekserve.api.accounts import Accounts
from seekserve.config import ModelConfig, ServerConfig
from seekserve.engine.async_engine import AsyncEngine
from seekserve.errors import AuthenticationFailed, InvalidRequest, UnknownModel
from seekserve.prompt.chat_template import ChatTemplate
from seekserve.prompt.tokenizer import Tokenizer
from seekserve.sampling.constraints import GrammarFactory

if TYPE_CHECKING:
    from seekserve.api.routes.metrics import ServerMetrics


@dataclass
class ServedModel:
    """One model as served under a name: its async engine, tokenizer, chat template and
    grammar compiler."""

    name: str
    config: ModelConfig
    engine: AsyncEngine
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    grammars: GrammarFactory

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len


@dataclass
class ServerState:
    config: ServerConfig
    models: dict[str, ServedModel]
    accounts: Accounts | None = None
    """Keys, balances, limits; default: the configured static keys, nothing charged."""
    metrics: ServerMetrics | None = None
    """Latency histograms that generations record into (None: not recorded)."""
    status: Literal["loading", "ready", "failed"] = "ready"
    """`models` is filled when the last engine has started ("ready"); /health reports it."""
    load_error: str | None = None
    """Why loading failed (status "failed")."""

    def __post_init__(self) -> None:
        if self.accounts is None:
            self.accounts = Accounts(static_keys=tuple(self.config.api_keys))

    def cache_salt(self, request: Request) -> str:
        """The prefix-cache scope of a request: its API key's digest, unless the cache is
        shared (no keys configured, or --shared-prefix-cache)."""
        api_key = getattr(request.state, "api_key", None)
        if api_key is None or self.config.shared_prefix_cache:
            return ""
        return hashlib.sha256(api_key.encode()).hexdigest()

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            hint = ""
            if name == "deepseek-reasoner":
                hint = (
                    "no thinking model is configured on this server; serve one with "
                    "`seekserve serve --model PATH --served-model-name deepseek-reasoner`"
                )
            raise UnknownModel(name, hint)
        return self.models[name]

    def thinking_model(self) -> ServedModel:
        """The served thinking model (`thinking: {"type": "enabled"}`)."""
        for served in self.models.values():
            if served.config.is_reasoning:
                return served
        raise InvalidRequest(
            "Invalid thinking value: thinking mode is not available, no reasoning model is "
            "configured on this server (serve one as deepseek-reasoner)",
            param="thinking",
        )

    def non_thinking_model(self) -> ServedModel | None:
        """deepseek-chat, or any non-thinking model (`thinking: {"type": "disabled"}`)."""
        candidates = [s for s in self.models.values() if not s.config.is_reasoning]
        for served in candidates:
            if served.name == "deepseek-chat":
                return served
        return candidates[0] if candidates else None


def get_state(request: Request) -> ServerState:
    return request.app.state.seekserve


StateDep = Annotated[ServerState, Depends(get_state)]

_BAD_HEADER = "Authentication Fails (auth header format should be Bearer sk-...)"


def check_api_key(request: Request, state: StateDep) -> None:
    """401 unless the bearer key (on /anthropic also `x-api-key`) is a live ledger key or a
    configured one (no keys at all: an open server)."""
    accounts = state.accounts
    assert accounts is not None
    if not accounts.requires_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip() if scheme.lower() == "bearer" else ""
    if request.url.path.startswith("/anthropic/"):  # Anthropic clients send x-api-key
        key = key or request.headers.get("x-api-key", "").strip()
    if not key:
        raise AuthenticationFailed(_BAD_HEADER)
    found = accounts.authenticate(key)
    if found is False:
        raise AuthenticationFailed(f"Authentication Fails, Your api key: ****{key[-4:]} is invalid")
    request.state.api_key = key
    if found is not True:
        request.state.key_record = found


AuthDep = Depends(check_api_key)
