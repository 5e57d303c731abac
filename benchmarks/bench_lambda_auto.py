"""λ auto on the ROCM toy, epoch by epoch: does the rule settle D̄ on its budget?

    python benchmarks/bench_lambda_auto.py

Two `rlcm train --config rocm-tiny-cpu` runs (the CLI, local Ray), as docs/rocm_lambda.md advises choosing δ: one
with the preset's fixed λ, whose mean D̄ over its last half becomes δ (`rocm.lam_target`), then one with
`rocm.lam=auto` and that δ. From the second run's metrics.jsonl: λ per epoch, D̄/δ per epoch (D̄ = the epoch's mean
Σ_k D_k per chain), the band of D̄/δ over the last half and of λ over the last quarter, the trained reward and the
held-out monitor, first epoch → last, beside the fixed-λ run's.
Writes docs/results/lambda_auto.md (included by docs/rocm_lambda.md).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlcm.config.schema import load_config

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
PRESET = "rocm-tiny-cpu"


def train(out: Path, overrides: list[str]) -> list[dict]:
    command = [sys.executable, "-m", "rlcm.commands.main", "train", "--config", PRESET, "--output-dir", str(out)]
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, check=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def report(fixed: list[dict], rows: list[dict], lam: float, target: float, reward: str, seconds: float) -> list[str]:
    lams = [r["lam"] for r in rows]
    ratios = [r["divergence_mean"] / target for r in rows]
    half, quarter = len(rows) // 2, len(rows) - len(rows) // 4
    last_half, last_quarter = ratios[half:], lams[quarter:]

    def listed(values):
        return ", ".join(f"{v:.3g}" for v in values)

    def learned(run):
        return (
            f"trained reward ({reward}) {run[0]['reward_mean']:.4f} → {run[-1]['reward_mean']:.4f}, held-out monitor "
            f"{run[0]['monitor_reward_mean']:.3f} → {run[-1]['monitor_reward_mean']:.3f}"
        )

    return [
        f"Written by `python benchmarks/bench_lambda_auto.py` ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, CPU; {seconds:.0f} s for both runs, Ray's starts included).",
        "",
        f"- Fixed λ = {lam:g} (`rlcm train --config {PRESET}`, {len(fixed)} epochs): D̄ over its last half "
        f"{target:.3g}, taken as δ; {learned(fixed)}.",
        f"- `--set rocm.lam=auto --set rocm.lam_target={target:.3g}` ({len(rows)} epochs):",
        f"    - λ per epoch: {listed(lams)}.",
        f"    - D̄/δ per epoch: {listed(ratios)}.",
        f"    - Last half (epochs {half}–{len(rows) - 1}): D̄/δ within [{min(last_half):.3f}, {max(last_half):.3f}]. "
        f"Last quarter (epochs {quarter}–{len(rows) - 1}): λ within [{min(last_quarter):.3f}, "
        f"{max(last_quarter):.3f}], a factor {max(last_quarter) / min(last_quarter):.2f}.",
        f"    - {learned(rows)[0].upper()}{learned(rows)[1:]}.",
    ]


def main() -> None:
    config = load_config(PRESET)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fixed = train(Path(tmp) / "fixed", [])
        target = float(np.mean([r["divergence_mean"] for r in fixed[len(fixed) // 2 :]]))
        rows = train(Path(tmp) / "auto", ["rocm.lam=auto", f"rocm.lam_target={target:.3g}"])
        lines = report(
            fixed, rows, config.rocm.lam, float(f"{target:.3g}"), config.reward.name, time.perf_counter() - start
        )
    (RESULTS / "lambda_auto.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
