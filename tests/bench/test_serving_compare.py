"""`seekserve bench compare`'s interleaved mode (bench/serving.py: run_interleaved): both
servers up, each scenario's measured runs alternated between them, the warm-up only before
each server's first run, and each server's runs summarised as one scenario."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from seekserve.bench import load, serving


class FakeServer:
    def __init__(self, key: str, argv: list[str], port: int, log_path: Path) -> None:
        self.key, self.startup_s, self.port = key, 1.5, port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.stopped = False
        self.rss = type("Rss", (), {"peak": lambda _self: (2**20, "test")})()
        self.proc = type("Proc", (), {"pid": 0, "returncode": None})()

    def start(self, timeout: float) -> None:
        calls.append(("start", self.key))

    def alive(self) -> bool:
        return True

    def stop(self) -> int:
        calls.append(("stop", self.key))
        return 0

    def log_tail(self, n: int = 20) -> str:
        return ""


calls: list[tuple] = []


def fake_run(cfg, server):
    calls.append(("run", server.key, cfg.concurrency, cfg.warmup, cfg.repeat))
    rate = {"seekserve": 200.0, "llama": 100.0}[server.key] + len(calls)
    run = dict.fromkeys(load.SUMMARY_KEYS, 0.1) | {"agg_out_tok_s": rate}
    config = {**asdict(cfg), "prompts": len(cfg.prompts), "model": "smollm2"}  # as run_load
    return {"config": config, "runs": [{**run, "errors": 0, "usage_problems": 0}], "summary": {}}


@pytest.fixture
def patched(monkeypatch, tmp_path):
    calls.clear()
    monkeypatch.setattr(serving, "Server", FakeServer)
    monkeypatch.setattr(serving, "run_with_sampler", fake_run)
    monkeypatch.setattr(serving, "run_async", lambda result: result)
    monkeypatch.setattr(serving, "free_port", lambda: 9000)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n", encoding="utf-8")
    args = serving.parse_args(
        ["--repeat", "3", "--prompt-file", str(prompts), "--system-file", str(prompts)]
    )
    args.out_dir = tmp_path
    args.gguf = tmp_path / "model.gguf"
    return args


def test_runs_alternate_between_the_servers_with_one_warm_up_each(patched):
    scenarios = [serving.SCENARIOS["c1"], serving.SCENARIOS["c16"]]
    results = serving.run_interleaved(patched, ["seekserve", "llama"], scenarios, "stamp")
    assert calls == [
        ("start", "seekserve"),
        ("start", "llama"),
        *[
            ("run", key, concurrency, warmup if rep == 0 else 0, 1)
            for concurrency, warmup in ((1, 1), (16, 16))
            for rep in range(3)
            for key in ("seekserve", "llama")
        ],
        ("stop", "seekserve"),
        ("stop", "llama"),
    ]
    c16 = results["llama"]["scenarios"]["c16"]
    # llama's c16 runs were calls 10, 12, 14 (+100 tok/s each): median 112, range 110..114
    assert [run["agg_out_tok_s"] for run in c16["runs"]] == [110.0, 112.0, 114.0]
    assert c16["summary"]["agg_out_tok_s"] == {"median": 112.0, "min": 110.0, "max": 114.0}
    assert c16["config"]["repeat"] == 3 and c16["config"]["concurrency"] == 16
    assert c16["config"]["warmup"] == 16 and c16["config"]["model"] == "smollm2"  # run 1's
    assert results["seekserve"]["startup_s"] == 1.5
    assert results["seekserve"]["peak_rss_bytes"] == 2**20
    assert results["llama"]["exit_code"] == 0
