#!/usr/bin/env bash
# The README's first command: install (scripts/bootstrap.sh), then train the default toy without the test suite.
#   bash scripts/train_demo.sh [rlcm train options, e.g. --config rocm-tiny-cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TRANSFORMERS_VERBOSITY=error
exec .venv/bin/rlcm train "$@"
