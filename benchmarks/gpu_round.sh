#!/usr/bin/env bash
# One benchmark round on a GPU machine (<= 8 min of GPU time in all): real architectures, random weights, 512 px.
# 1. benchmarks/gpu_throughput.py: samples/s, MFU, peak memory and per-phase time of aesthetic, rocm-aesthetic and
#    ddpo-aesthetic, and the reference loop on the same GPU -> docs/results/gpu_throughput.md + .json (<= 5 min);
# 2. benchmarks/gpu_round.py: rollout, log-prob gap, ROCM memory, adapter broadcast -> docs/results/gpu.md (the rest).
# --smoke runs step 1 on the CPU with the toy models at 32 px (a suite test does), and skips step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TRANSFORMERS_VERBOSITY=error
PY=${PYTHON:-.venv/bin/python}
TOTAL=${GPU_ROUND_TIMEOUT:-480}
start=$SECONDS
timeout "$((TOTAL * 5 / 8))" "$PY" benchmarks/gpu_throughput.py "$@"
if [[ " $* " != *" --smoke "* ]]; then
  timeout "$((TOTAL - (SECONDS - start)))" "$PY" benchmarks/gpu_round.py "$@"
fi
