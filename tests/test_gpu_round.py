"""`benchmarks/gpu_round.sh --smoke`: the GPU round's throughput table (issue 24) runs on the CPU with the toys and
writes its markdown and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_round_smoke_writes_the_side_by_side_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "gpu_throughput"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_round.sh"), "--smoke", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    runs = [row["run"] for row in result["rows"]]
    assert runs == ["aesthetic", "aesthetic, reference loop", "rocm-aesthetic", "ddpo-aesthetic"]
    assert all(row["samples_per_s"] > 0 and row["mfu"] is None for row in result["rows"])  # no GPU: no MFU
    assert result["ratio"] > 0 and "| aesthetic, reference loop |" in out.with_suffix(".md").read_text()
