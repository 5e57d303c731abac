#!/usr/bin/env bash
# Node-loss scenarios on a multi-node Ray cluster on one machine (ray.cluster_utils.Cluster): a rollout node, a
# learner node (RLCM and ROCM) and a reward replica's node (Serve backend) disappear while a run goes on.
# Several minutes on 2 cores; not part of the default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export RLCM_NODE_LOSS=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m pytest tests/test_node_loss.py -v -s -p no:cacheprovider "$@"
