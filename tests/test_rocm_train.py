"""ROCM through the driver on local Ray: the laptop preset trains, the monitoring rollouts score, resume is exact.

Whether it learns from its reward is tests/test_learning.py's question (against a random-direction control)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import load_file

from cluster.trainer import Trainer
from rlcm.commands.main import main
from rlcm.config.schema import load_config
from rollout.models import build_tiny_pipeline

pytestmark = pytest.mark.slow  # end-to-end runs

FAST = ["run.sample_grid_every=100", "run.save_every=100", "scaleout.control_poll_s=0.1", "run.plots=false"]


def run(tmp_path, *overrides, resume=False):
    trainer = Trainer(load_config("rocm-tiny-cpu", [*FAST, *overrides]), tmp_path, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.shutdown()


def test_rocm_tiny_cpu_trains_and_monitors(ray_local, tmp_path):
    rows = run(tmp_path, "run.epochs=4")
    assert len(rows) == 4 and all(r["algorithm"] == "rocm" for r in rows)
    for key in (
        "reward_mean",
        "divergence_mean",
        "divergence_kl",
        "objective",
        "grad_norm",
        "time_train_s",
        "time_sync_s",
        "monitor_reward_mean",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert [r["samples_seen"] for r in rows] == [4 * (i + 1) for i in range(4)]
    assert [r["policy_version"] for r in rows] == list(range(1, 5))
    assert all(r["monitor_reward_version"] == "1" and r["num_invalid"] == 0 for r in rows)

    # the LoRA loads in stock diffusers and changes the images
    pipe = build_tiny_pipeline()
    base = pipe("a cat", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe.load_lora_weights(str(tmp_path / "checkpoints" / "epoch-0003"))
    tuned = pipe("a cat", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert isinstance(pipe, LatentConsistencyModelPipeline) and not np.allclose(base, tuned)


def test_rocm_two_learners_resume_through_the_cli_matches_uninterrupted(ray_local, tmp_path):
    """DDP over 2 ROCM learners (each its own prompts and noise), stopped after 1 epoch and resumed with
    `rlcm train --resume`, ends with the same adapter as 2 epochs straight."""
    two = ["resources.num_learners=2"]
    full = run(tmp_path / "full", "run.epochs=2", *two)
    assert [r["samples_seen"] for r in full] == [8, 16] and all(r["optimizer_steps"] == 1 for r in full)

    def cli(epochs, *flags):
        sets = [arg for item in [*FAST, *two, f"run.epochs={epochs}"] for arg in ("--set", item)]
        return main(["train", "--config", "rocm-tiny-cpu", "--output-dir", str(tmp_path / "split"), *sets, *flags])

    assert cli(1) == 0
    assert cli(2, "--resume") == 0
    rows = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["samples_seen"] == full[-1]["samples_seen"]
    a = load_file(tmp_path / "full/checkpoints/epoch-0001/pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "split/checkpoints/epoch-0001/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows[-1]["reward_mean"] == pytest.approx(full[-1]["reward_mean"], rel=1e-6)


def test_lam_auto_steers_the_divergence_to_its_budget_and_resumes_bitwise(ray_local, tmp_path):
    """`rocm.lam: auto` on the toy: λ follows the bounded update of the logged divergence, which is within a factor 2 of
    `lam_target` from epoch 5 on; a run stopped after 4 epochs and resumed equals 7 epochs straight."""
    auto = ["rocm.lam=auto", "rocm.lam_target=0.5", "rocm.lam_init=0.1", "rocm.lam_max_factor=1.5"]
    full = run(tmp_path / "full", "run.epochs=7", *auto)
    lams = [r["lam"] for r in full]
    assert lams[0] == 0.1 and all(
        r["lam_divergence_target"] == 0.5 and r["lam_divergence"] == r["divergence_mean"] for r in full
    )
    for row, next_lam in zip(full, lams[1:]):  # the logged update is the rule's
        factor = min(max((row["divergence_mean"] / 0.5) ** 0.5, 1 / 1.5), 1.5)
        assert next_lam == pytest.approx(row["lam"] * factor, rel=1e-9)
    assert all(0.5 <= r["divergence_mean"] / 0.5 <= 2 for r in full[5:]), [r["divergence_mean"] for r in full]

    run(tmp_path / "split", "run.epochs=4", *auto)
    state = json.loads((tmp_path / "split/checkpoints/epoch-0003/driver_state.json").read_text())
    assert state["lam"] == lams[4]
    resumed = run(tmp_path / "split", "run.epochs=7", *auto, resume=True)
    assert [r["lam"] for r in resumed] == lams[4:]
    a = load_file(tmp_path / "full/checkpoints/epoch-0006/pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "split/checkpoints/epoch-0006/pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
