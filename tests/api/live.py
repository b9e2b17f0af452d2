"""A real uvicorn server on 127.0.0.1 in a daemon thread, for tests whose client is the
official `openai` SDK or that need a real socket (clients that go away mid-request)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI

from seekserve.engine.engine import Engine
from tests.api.helpers import engine_of


@dataclass
class LiveServer:
    base_url: str
    app: FastAPI

    @property
    def engine(self) -> Engine:
        return engine_of(self)


@contextmanager
def live_server(app: FastAPI, startup_timeout_s: float = 30.0) -> Iterator[LiveServer]:
    """Serve `app` on a free port until the block ends; yields once /health answers 200.

    `startup_timeout_s` covers the lifespan (model load), so a real model needs more than the
    tiny one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout_s
    try:
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                f"server did not become healthy in {startup_timeout_s:g} s"
            )
            assert thread.is_alive(), "server thread died"
            time.sleep(0.05)
        yield LiveServer(base_url, app)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive()
