"""The FastAPI application: factory, lifespan (load models, start/stop engines), error mapping."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekserve.accounts.ledger import Ledger, UsageWriter
from seekserve.api.accounts import Accounts
from seekserve.api.openapi import install_openapi
from seekserve.api.routes import balance, chat, completions, health, models
from seekserve.api.routes.metrics import make_registry
from seekserve.api.routes.metrics import router as metrics_router
from seekserve.api.state import ServedModel, ServerState
from seekserve.config import EngineConfig, ServerConfig
from seekserve.engine.async_engine import AsyncEngine
from seekserve.errors import ApiError, PayloadTooLarge, error_body, to_status_and_body
from seekserve.llm import ModelFiles

logger = logging.getLogger(__name__)


def check_served_names(engine_configs: list[EngineConfig]) -> None:
    """ValueError when two configs share a served model name (or none is given)."""
    if not engine_configs:
        raise ValueError("no model to serve; give --model or a --config file with [[models]]")
    seen: dict[str, int] = {}
    for index, config in enumerate(engine_configs, start=1):
        name = config.model.served_model_name
        if name in seen:
            raise ValueError(
                f"served model name {name!r} is given twice (models {seen[name]} and {index}: "
                f"{engine_configs[seen[name] - 1].model.model} and {config.model.model}); "
                "give each model its own name"
            )
        seen[name] = index


def load_served_models(engine_configs: list[EngineConfig]) -> dict[str, ServedModel]:
    """Resolve each config's files (tokenizer, template; architecture and tensor types
    checked) into a `ServedModel` whose engine is not started yet."""
    check_served_names(engine_configs)
    served: dict[str, ServedModel] = {}
    for config in engine_configs:
        files = ModelFiles.resolve(config)
        name = config.model.served_model_name
        served[name] = ServedModel(
            name=name,
            config=config.model,
            engine=AsyncEngine(files.build_engine),  # weights load on the engine thread
            tokenizer=files.tokenizer,
            chat_template=files.chat_template,
            grammars=files.grammars,
        )
    return served


def create_app(server_config: ServerConfig, engine_configs: list[EngineConfig]) -> FastAPI:
    """The app; models load and engines start in the lifespan (startup), stop at shutdown."""

    check_served_names(engine_configs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = load_served_models(engine_configs)
        started: list[ServedModel] = []
        try:
            for served in models.values():
                served.engine.start()  # loads the weights; re-raises a load error
                started.append(served)
        except BaseException:
            for served in started:  # a model that failed stops the ones before it
                served.engine.stop()
            raise
        accounts = open_accounts(server_config)
        app.state.seekserve = ServerState(config=server_config, models=models, accounts=accounts)
        app.state.metrics = make_registry(app.state.seekserve)
        logger.info("serving %s", ", ".join(models))
        try:
            yield
        finally:
            for served in models.values():
                served.engine.stop()
            accounts.close()  # after the engines: the last usage rows are committed

    app = FastAPI(title="SeekServe", version="0.1.0", lifespan=lifespan)

    app.add_middleware(BodySizeLimit, max_bytes=server_config.max_body_bytes)
    app.add_middleware(TraceIdMiddleware)
    # browsers may call the API from any origin, as they may call DeepSeek's
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    routers = (
        chat.router,
        completions.router,
        models.router,
        balance.router,
        health.router,
        metrics_router,
    )
    for router in routers:
        app.include_router(router)
    _install_error_handlers(app)
    install_openapi(app)
    return app


def open_accounts(config: ServerConfig) -> Accounts:
    """The ledger (when configured), its usage writer, static keys, limits."""
    ledger = writer = None
    if config.ledger_path is not None:
        ledger = Ledger(config.ledger_path)
        writer = UsageWriter(config.ledger_path)
    return Accounts(
        ledger=ledger,
        writer=writer,
        static_keys=tuple(config.api_keys),
        billing=config.billing,
        concurrency_limit=config.concurrency_limit,
    )


class BodySizeLimit:
    """413 for a body over `max_bytes`: by its Content-Length before reading, or while it
    streams in (a chunked body), so an oversized body is never held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send, int(value))
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message(received))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int) -> str:
        return f"Request body too large: {size} bytes or more, the limit is {self.max_bytes} bytes"

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        status, body = to_status_and_body(PayloadTooLarge(self._message(size)))
        await JSONResponse(body, status_code=status)(scope, receive, send)


class TraceIdMiddleware:
    """DeepSeek answers every request with a 32-hex-digit `x-ds-trace-id` (spec §1). Plain
    ASGI (no body buffering), so streams and disconnects pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = uuid.uuid4().hex.encode()

        async def send_with_trace_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-ds-trace-id", trace_id))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_trace_id)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        status, body = to_status_and_body(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(f"Invalid request: {exc.errors()[0].get('msg')}", "invalid_request_error"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error", exc_info=exc)
        status, body = to_status_and_body(exc)
        return JSONResponse(body, status_code=status)
