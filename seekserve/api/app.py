"""The FastAPI application: factory, lifespan (load models, start/stop engines), middleware,
error mapping.

Models load in the lifespan by default: the app answers once every engine runs (what tests
and embedders expect). `ServerConfig.load_in_background` (`seekserve serve`) starts the
loading as a task instead, so the server listens at once: /health answers 503 "loading",
then 200 "ready" (or 503 "failed" with the error), and the API answers 503 until ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
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
from seekserve.api.request_log import RequestLog, log_model_summary
from seekserve.api.routes import anthropic, balance, chat, completions, health, models
from seekserve.api.routes.metrics import ServerMetrics
from seekserve.api.routes.metrics import router as metrics_router
from seekserve.api.state import ServedModel, ServerState
from seekserve.config import EngineConfig, ServerConfig, duplicate_served_name
from seekserve.engine.async_engine import AsyncEngine
from seekserve.errors import (
    ApiError,
    Overloaded,
    PayloadTooLarge,
    error_body,
    to_status_and_body,
)
from seekserve.llm import ModelFiles
from seekserve.logging_setup import request_id_var

logger = logging.getLogger(__name__)


def check_served_names(engine_configs: list[EngineConfig]) -> None:
    """ValueError when two configs share a served model name (or none is given)."""
    if not engine_configs:
        raise ValueError("no model to serve; give --model or a --config file with [[models]]")
    if duplicate := duplicate_served_name(engine_configs):
        name, first, second = duplicate
        paths = (engine_configs[first - 1].model.model, engine_configs[second - 1].model.model)
        raise ValueError(
            f"served model name {name!r} is given twice (models {first} and {second}: "
            f"{paths[0]} and {paths[1]}); give each model its own name"
        )


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


class ModelLoader:
    """Resolves the served models and starts their engines, blocking: in the lifespan, or on
    a worker thread (background loading). `stop` stops every engine it started or is
    starting, and keeps it from starting more (shutdown while loading)."""

    def __init__(self, engine_configs: list[EngineConfig]) -> None:
        self.engine_configs = engine_configs
        self._engines: list[AsyncEngine] = []
        self._lock = threading.Lock()
        self._is_stopped = False

    def load(self, loop: asyncio.AbstractEventLoop) -> dict[str, ServedModel]:
        """The models with their engines running (outputs delivered on `loop`); re-raises
        the first load error."""
        models = load_served_models(self.engine_configs)
        for served in models.values():
            with self._lock:
                if self._is_stopped:
                    raise RuntimeError("the server shut down while the models were loading")
                self._engines.append(served.engine)
            served.engine.start(loop)  # loads the weights; re-raises a load error
        return models

    def stop(self) -> None:
        with self._lock:
            self._is_stopped = True
            engines = list(self._engines)
        for engine in engines:
            engine.stop()


def create_app(server_config: ServerConfig, engine_configs: list[EngineConfig]) -> FastAPI:
    """The app; models load in the lifespan (or, with `load_in_background`, in a task it
    starts) and engines stop at shutdown."""

    check_served_names(engine_configs)
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        accounts = open_accounts(server_config)
        state = ServerState(
            config=server_config, models={}, accounts=accounts, metrics=metrics, status="loading"
        )
        app.state.seekserve = state
        metrics.watch(state)
        loader = ModelLoader(engine_configs)
        loading: asyncio.Task[None] | None = None
        try:
            if server_config.load_in_background:
                loading = asyncio.create_task(_load_in_background(state, loader))
            else:
                _set_ready(state, loader.load(asyncio.get_running_loop()))
            yield
        finally:
            if loading is not None:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            loader.stop()  # a model that failed to load stops the ones before it
            accounts.close()  # after the engines: the last usage rows are committed

    app = FastAPI(title="SeekServe", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics

    # outermost last: the trace id is set before the request log runs (its line carries the
    # id), and the log sees every answer, the gate's 503 and the size limit's 413 included
    app.add_middleware(BodySizeLimit, max_bytes=server_config.max_body_bytes)
    app.add_middleware(ReadinessGate)
    app.add_middleware(RequestLog, metrics=metrics)
    app.add_middleware(TraceIdMiddleware)
    # browsers may call the API from any origin, as they may call DeepSeek's
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    routers = (
        chat.router,
        anthropic.router,
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


async def _load_in_background(state: ServerState, loader: ModelLoader) -> None:
    """Load on a worker thread while the server answers; a failure is logged and kept for
    /health (the server stays up to report it)."""
    try:
        models = await asyncio.to_thread(loader.load, asyncio.get_running_loop())
    except Exception as exc:
        loader.stop()
        state.status, state.load_error = "failed", f"{type(exc).__name__}: {exc}"
        logger.error(
            'loading the models failed; /health answers 503 "failed" and every API request '
            "503 until the server is restarted: %s",
            state.load_error,
            exc_info=exc,
        )
        if state.config.exit_on_load_failure:
            logger.error("shutting down: a model failed to load")
            os.kill(os.getpid(), signal.SIGTERM)
        return
    _set_ready(state, models)


def _set_ready(state: ServerState, models: dict[str, ServedModel]) -> None:
    state.models.update(models)
    state.status = "ready"
    listen_url = f"http://{state.config.host}:{state.config.port}"
    for served in models.values():
        log_model_summary(served, listen_url)
    logger.info("serving %s", ", ".join(models))


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


class ReadinessGate:
    """503 for the API until the models are loaded (background loading): "loading", or
    "failed to load". /health, /metrics and the docs always answer."""

    _ALWAYS_OPEN = frozenset({"/health", "/metrics", "/docs", "/redoc", "/openapi.json"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServerState | None = getattr(scope["app"].state, "seekserve", None)
        if (
            scope["type"] != "http"
            or scope["path"] in self._ALWAYS_OPEN
            or state is None
            or state.status == "ready"
        ):
            await self.app(scope, receive, send)
            return
        if state.status == "loading":
            error = Overloaded("Server Overloaded: the model is loading, retry in a few seconds")
            headers = {"retry-after": "5"}
        else:
            error = Overloaded("Server Overloaded: the model failed to load (see /health)")
            headers = {}
        status, body = to_status_and_body(error)
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


class TraceIdMiddleware:
    """DeepSeek answers every request with a 32-hex-digit `x-ds-trace-id` (spec §1). Plain
    ASGI (no body buffering), so streams and disconnects pass through untouched. The id is
    also the request id of every log line written while the request runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = uuid.uuid4().hex.encode()
        # NOTE: not reset afterwards: each request runs in its own task (its own context),
        # and the 500 handler, which runs outside this middleware, logs with the id too
        request_id_var.set(trace_id.decode())

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
