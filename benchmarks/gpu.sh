#!/usr/bin/env bash
# Decode step time (batch 1/32/256, 1024-token context) and prefill throughput of SeekServe's
# model runner on a random-weight Llama-3-8B-shaped model, against the H200 HBM roofline and
# bf16 peak (benchmarks/gpu_bench.py). Needs one CUDA GPU and PyTorch; takes about a minute,
# at most 470 s. Results: the table on stdout and JSON under $RESULTS_DIR (default
# benchmarks/results/gpu-<UTC date>.json). Extra arguments go to gpu_bench.py.
#   bash benchmarks/gpu.sh
#   RESULTS_DIR=/some/dir PYTHON=python3 bash benchmarks/gpu.sh --iters 20
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
RESULTS_DIR="${RESULTS_DIR:-benchmarks/results}"

if ! "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu.sh: '$PYTHON' has no PyTorch with a usable CUDA device (set PYTHON=...);" \
        "on a CPU-only machine run gpu_bench.py --device cpu --shape tiny instead" >&2
    exit 1
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name())"

mkdir -p "$RESULTS_DIR"
out="$RESULTS_DIR/gpu-$(date -u +%Y%m%d-%H%M%S).json"
PYTHONPATH=. timeout 470 "$PYTHON" benchmarks/gpu_bench.py \
    --device cuda --shape llama3-8b --batches 1,32,256 --context 1024 \
    --prefill-tokens 2048 --prefill-batches 1,4 --iters 10 --json-out "$out" "$@"
