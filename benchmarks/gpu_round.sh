#!/usr/bin/env bash
# One benchmark round on a GPU machine (< 8 min): real architectures, random weights, 512 px.
# Writes docs/results/gpu.md. Extra arguments go to gpu_round.py (e.g. --smoke on a CPU, with
# GPU_ROUND_TIMEOUT=0 to lift the 8-minute limit there).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TRANSFORMERS_VERBOSITY=error
PY=${PYTHON:-.venv/bin/python}
timeout "${GPU_ROUND_TIMEOUT:-480}" "$PY" benchmarks/gpu_round.py "$@"
