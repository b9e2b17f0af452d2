"""SIGTERM drains: a `seekserve serve` process stops taking requests, lets the stream in
flight finish (bounded by --drain-timeout), stops its engines, and exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_lets_the_stream_in_flight_finish(tiny_chat_model_dir: Path, tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seekserve",
            "serve",
            "--model",
            str(tiny_chat_model_dir),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--kv-cache-memory",
            "64MiB",
            "--drain-timeout",
            "30",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SEEKSERVE_HOME": str(tmp_path / "home")},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 300,
            "ignore_eos": True,
            "stream": True,
        }
        lines: list[str] = []
        started = threading.Event()

        def read() -> None:
            with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    started.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        # uvicorn drains, shuts the lifespan down, then re-raises the signal it caught
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "server.log").read_text()
        events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2].removeprefix("data: "))
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["usage"]["completion_tokens"] == 300
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_a_model_that_cannot_load_ends_the_server(tmp_path: Path):
    """`seekserve serve` listens at once (/health: loading), but a model that fails to load
    ends the process with a failure a supervisor sees, the error in the log."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seekserve",
                "serve",
                "--model",
                str(bad),
                "--port",
                str(_free_port()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SEEKSERVE_HOME": str(tmp_path / "home")},
        )
        try:
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code != 0
    assert f"{bad} is not a readable GGUF file" in log_path.read_text()
