#!/usr/bin/env bash
# Dry-run every preset (or the ones named) one after another and write their rows of the table in
# docs/results/dry-runs.md (rows of other presets are kept).
#   bash scripts/dry_run_all.sh [--resolution 64] [preset ...]
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TRANSFORMERS_VERBOSITY=error
RES=64
if [ "${1:-}" = "--resolution" ]; then RES=$2; shift 2; fi
PRESETS=("$@")
if [ ${#PRESETS[@]} -eq 0 ]; then
  PRESETS=($(ls rlcm/config/presets/*.yaml | xargs -n1 basename | sed 's/\.yaml$//'))
fi
for preset in "${PRESETS[@]}"; do
  [ -f "rlcm/config/presets/$preset.yaml" ] || { echo "unknown preset $preset: choose from $(ls rlcm/config/presets | sed 's/\.yaml$//' | tr '\n' ' ')" >&2; exit 2; }
done
LOGS=runs/dry-run-logs
mkdir -p "$LOGS"
for preset in "${PRESETS[@]}"; do
  echo "== $preset"
  .venv/bin/rlcm train --config "$preset" --dry-run --dry-run-resolution "$RES" --output-dir "runs/$preset-dry-run" > "$LOGS/$preset.log" 2>&1
  echo "exit $?" >> "$LOGS/$preset.log"
  tail -3 "$LOGS/$preset.log"
done
.venv/bin/python benchmarks/dry_run_table.py "$LOGS" "$RES"
