#!/usr/bin/env bash
# One GPU session's checks, about 7 minutes on an H100: the CUDA-only tests of the training
# steps, then benchmarks/gpu_trials.py with and without MPS. Logs and JSON go to $OUT (or .).
#
#   bash benchmarks/gpu_check.sh        # needs torch, numpy, torchvision, pyyaml, pytest
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MPS=${MPS_CONTROL:-$(command -v nvidia-cuda-mps-control || echo /usr/local/nvidia/bin/nvidia-cuda-mps-control)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_steps.py -k cuda 2>&1 \
    | tee "$OUT/cuda_tests.log"
timeout 420 "$PY" benchmarks/gpu_trials.py --out "$OUT/gpu_trials.json" --mps-control "$MPS" 2>&1 \
    | tee "$OUT/gpu_trials.log"
