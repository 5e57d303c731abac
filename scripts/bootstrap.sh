#!/usr/bin/env bash
# Create .venv and install rlcm with its test extra. The CPU torch wheel is pinned here (the
# library itself asks for a range); GPU machines install their own torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
