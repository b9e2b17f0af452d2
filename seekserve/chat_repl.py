"""`seekserve chat`: an interactive terminal chat with a SeekServe (or any DeepSeek-API)
server.

It is one more HTTP client: each turn POSTs the whole history to /chat/completions with
`stream: true` and writes the deltas as they arrive — reasoning (a thinking model's
`reasoning_content`) dimmed and labelled, then the answer. With
`--model PATH` it first starts the server in this process on a free local port, so both
modes share one code path. It knows nothing of the engine.

    you> remember the number seven
    Noted: seven.
    you> /reset
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import httpx

from seekserve.config import EngineConfig, ServerConfig

HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) quits, /help shows this"
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


@dataclass
class ChatOptions:
    """What every turn sends; `None` leaves the field to the server's default."""

    model: str = "deepseek-chat"
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    is_verbose: bool = False
    """Write the usage after each reply: prompt, completion (and cached) tokens."""


@dataclass
class Reply:
    """One streamed assistant turn, as gathered from its chunks."""

    content: str = ""
    reasoning_content: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class ChatSession:
    """The conversation (system message + turns) and the writer of streamed replies."""

    def __init__(self, client: httpx.Client, options: ChatOptions, out: TextIO) -> None:
        self.client = client
        self.options = options
        self.out = out
        self.is_tty = out.isatty()
        self.history: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.history.clear()

    def messages(self, user_text: str) -> list[dict[str, Any]]:
        messages = [*self.history, {"role": "user", "content": user_text}]
        if self.options.system is not None:
            messages.insert(0, {"role": "system", "content": self.options.system})
        return messages

    def ask(self, user_text: str) -> Reply | None:
        """Send one user turn, write the reply as it streams, and keep both in the history.
        An HTTP error is written and leaves the history unchanged (None)."""
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": self.messages(user_text),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                self._write(f"error {response.status_code}: {_error_message(response)}\n")
                return None
            reply = self._write_stream(response.iter_lines())
        self.history.append({"role": "user", "content": user_text})
        # NOTE: reasoning_content is not sent back: DeepSeek ignores it in later turns
        self.history.append({"role": "assistant", "content": reply.content})
        return reply

    def _write_stream(self, lines: Iterator[str]) -> Reply:
        reply = Reply()
        in_reasoning = False
        for line in lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue  # blank separators and ': keep-alive' comments
            chunk = json.loads(line.removeprefix("data: "))
            reply.usage = chunk.get("usage") or reply.usage
            if not chunk.get("choices"):
                continue
            choice = chunk["choices"][0]
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if not in_reasoning:
                    self._write(self._dim("thinking: "))
                    in_reasoning = True
                reply.reasoning_content += delta["reasoning_content"]
                self._write(self._dim(delta["reasoning_content"]))
            if delta.get("content"):
                if in_reasoning:
                    self._write("\n")
                    in_reasoning = False
                reply.content += delta["content"]
                self._write(delta["content"])
            reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
        self._write_end(reply, in_reasoning)
        return reply

    def _write_end(self, reply: Reply, in_reasoning: bool) -> None:
        if in_reasoning or reply.content:
            self._write("\n")
        if reply.finish_reason == "length":
            self._write(self._dim("[stopped at max_tokens]") + "\n")
        if self.options.is_verbose and reply.usage is not None:
            usage = reply.usage
            cached = usage.get("prompt_cache_hit_tokens", 0)
            self._write(
                self._dim(
                    f"[usage] prompt_tokens={usage['prompt_tokens']} "
                    f"completion_tokens={usage['completion_tokens']} cached_tokens={cached}"
                )
                + "\n"
            )

    def _dim(self, text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if self.is_tty else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase


def run_repl(
    base_url: str,
    options: ChatOptions,
    api_key: str | None = None,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Read user lines until /exit or end of input; returns the exit status."""
    out = out or sys.stdout
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    timeout = httpx.Timeout(10.0, read=None)  # a long generation may be silent for a while
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        session = ChatSession(client, options, out)
        out.write(f"chatting with {options.model} at {base_url}; {HELP}\n")
        while True:
            try:
                line = _read_line(stdin, out)
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                session.reset()
                out.write("(conversation cleared)\n")
                continue
            if text == "/help":
                out.write(HELP + "\n")
                continue
            try:
                session.ask(text)
            except KeyboardInterrupt:
                out.write("\n(reply interrupted; it is not kept in the conversation)\n")
            except httpx.TransportError as exc:
                out.write(f"error: cannot reach {base_url}: {exc}\n")


def _read_line(stdin: TextIO | None, out: TextIO) -> str:
    """`input()` (with line editing) on a terminal; a plain read otherwise."""
    if stdin is None:
        return input("you> ")
    out.write("you> ")
    out.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line


@contextmanager
def local_server(
    engine_config: EngineConfig, log_level: str = "warning", startup_timeout_s: float = 600.0
) -> Iterator[str]:
    """Serve one model on a free 127.0.0.1 port in a daemon thread; yields its base URL
    once /health answers (the model is loaded)."""
    import uvicorn

    from seekserve.api.app import create_app

    app = create_app(ServerConfig(), [engine_config])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_healthy(base_url, thread, startup_timeout_s)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _wait_healthy(base_url: str, thread: threading.Thread, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the in-process server stopped while loading the model")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the model did not load within {timeout_s:g} s")
