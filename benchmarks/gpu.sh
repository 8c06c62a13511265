#!/usr/bin/env bash
# Inference and training-step throughput on one CUDA GPU: B/16 and L/16, bf16, SDPA flash kernels,
# with and without torch.compile; images/s and MFU against the card's dense bf16 peak.
# NOT RUN YET: written and syntax-checked on a CPU-only machine (see benchmarks/README.md).
#
#   bash benchmarks/gpu.sh                 # about 5 minutes on one H100
#   COMPILE=0 bash benchmarks/gpu.sh       # skip the torch.compile rows
#   PYTHON=.venv/bin/python RES=512,1024 BATCH=32 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RES=${RES:-224,512,1024}
BATCH=${BATCH:-16}
COMPILE=${COMPILE:-1}

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: no CUDA device visible to $PYTHON; nothing to run" >&2
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

compile_flags=("")
if [ "$COMPILE" = "1" ]; then compile_flags+=("--compile"); fi
for shape in b16 l16; do
    for c in "${compile_flags[@]}"; do
        # shellcheck disable=SC2086
        PYTHONPATH=$PWD "$PYTHON" benchmarks/bench_gpu.py --shape "$shape" --resolutions "$RES" --batch "$BATCH" $c
    done
done
