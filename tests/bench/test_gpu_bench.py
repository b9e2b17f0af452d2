"""Smoke test of the GPU benchmark (benchmarks/gpu_bench.py) on the CPU with a toy shape: the
script runs end to end and its JSON holds positive numbers where the GPU run will."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--shape", "tiny", "--batches", "1,2", "--context", "40"]
    args += ["--prefill-tokens", "24", "--prefill-batches", "1,2", "--iters", "1"]
    result = load_script().main([*args, "--json-out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["meta"]["shape"] == "tiny"
    assert result["meta"]["weight_bytes"] == 2 * result["meta"]["parameters"]  # bf16
    assert [r["batch"] for r in result["decode"]] == [1, 2]
    for row in result["decode"]:
        assert row["context"] == 40
        for key in (
            "step_ms",
            "prepare_ms",
            "tok_s",
            "kv_bytes",
            "roofline_ms",
            "roofline_fraction",
        ):
            assert row[key] > 0, key
    assert [(r["requests"], r["tokens"]) for r in result["prefill"]] == [(1, 24), (2, 48)]
    for row in result["prefill"]:
        for key in ("step_s", "tok_s", "flops", "tflops", "peak_fraction"):
            assert row[key] > 0, key
    assert "% of roofline" in result["table"] and "% of peak" in result["table"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA device")
def test_gpu_sh_refuses_without_cuda() -> None:
    """On a machine without CUDA (CI) the wrapper stops at once with a clear message."""
    result = subprocess.run(
        ["bash", str(SCRIPT.with_name("gpu.sh"))],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no PyTorch with a usable CUDA device" in result.stderr
