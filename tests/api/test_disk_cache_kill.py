"""kill -9 while the disk tier writes: the next start serves the same tokens, reports only
real hits, and holds no half-written or invalid entry."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from seekserve.engine.disk_cache import MAGIC, SUFFIX

PROMPTS = [
    f"Question {i}: " + "tell me about the rings of Saturn and its moons. " * 12 for i in range(6)
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveProcess:
    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "seekserve", "serve", "--model", str(model_dir)]
        argv += ["--port", str(self.port), "--dtype", "float32", "--block-size", "4"]
        argv += ["--kv-cache-memory", "64MiB", "--log-level", "warning", *extra]
        self.log = log
        with log.open("w") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def ask(self, prompt: str) -> dict:
        body = {
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 6,
            "temperature": 0,
        }
        response = httpx.post(self.url + "/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        data = response.json()
        return {"text": data["choices"][0]["message"]["content"], "usage": data["usage"]}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)


def test_kill_during_writes_then_restart(tiny_chat_model_dir, tmp_path):
    reference = LiveProcess(tiny_chat_model_dir, tmp_path / "ref.log", "--no-prefix-caching")
    try:
        expected = [reference.ask(p)["text"] for p in PROMPTS]
    finally:
        reference.stop()

    disk = tmp_path / "kv"
    victim = LiveProcess(
        tiny_chat_model_dir, tmp_path / "victim.log", "--disk-cache-dir", str(disk)
    )
    answered: list[str] = []

    def traffic() -> None:
        for prompt in PROMPTS:
            try:
                answered.append(victim.ask(prompt)["text"])
            except (httpx.HTTPError, AssertionError):
                return

    thread = threading.Thread(target=traffic)
    thread.start()
    while len(answered) < 2 and thread.is_alive():
        time.sleep(0.01)
    victim.stop(signal.SIGKILL)  # mid-traffic: requests in flight, writes queued
    thread.join()
    assert answered == expected[: len(answered)]

    # every entry left is complete and valid; no temporary file survives a start
    survivor = LiveProcess(
        tiny_chat_model_dir, tmp_path / "survivor.log", "--disk-cache-dir", str(disk)
    )
    try:
        results = [survivor.ask(p) for p in PROMPTS]
        again = survivor.ask(PROMPTS[0])
    finally:
        survivor.stop()
    assert [r["text"] for r in results] == expected
    for result in results:
        usage = result["usage"]
        assert usage["prompt_cache_hit_tokens"] % 64 == 0
        assert (
            usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
            == (usage["prompt_tokens"])
        )
    assert again["text"] == expected[0] and again["usage"]["prompt_cache_hit_tokens"] > 0
    assert not list(disk.glob("*.tmp"))
    files = list(disk.glob(f"*{SUFFIX}"))
    assert files and all(path.read_bytes().startswith(MAGIC) for path in files)
    assert "Traceback" not in (tmp_path / "survivor.log").read_text()
