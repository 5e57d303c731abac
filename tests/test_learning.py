"""The toy's JPEG reward moves under RLCM (no Ray): RolloutWorker + PPOLearner + JpegCompressibility.

Uses the `tiny-cpu` preset's settings (lr 1e-2, clip 0.2, 16 samples per epoch, LoRA on attention and
conv layers). The change must be statistically clear: last 3 epochs' samples vs the first epoch's. This does not
show that the reward causes it: on this toy a random reward moves the images as far (docs/results/toy_drift.md);
`benchmarks/bench_sign_test.py` compares against that control.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from cluster.config import load_config
from cluster.prompts import batch_seed, epoch_prompts, load_prompts
from learner.learner import LearnerSpec, PPOLearner
from rewards_service.scorers.jpeg import JpegCompressibility
from rollout.trajectory import Trajectory
from rollout.worker import RolloutSpec, RolloutWorker

EPOCHS = 10


def welch_t(a: np.ndarray, b: np.ndarray) -> float:
    """(mean a − mean b) / √(var a / n_a + var b / n_b), sample variances."""
    return float((a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))


def run_toy(epochs: int = EPOCHS) -> list[np.ndarray]:
    cfg = load_config("tiny-cpu")
    torch.set_num_threads(2)
    worker = RolloutWorker(
        RolloutSpec(
            model=cfg.model.name,
            lora=cfg.model.lora,
            num_steps=cfg.sampling.num_steps,
            guidance_scale=cfg.sampling.guidance_scale,
            model_seed=cfg.model.seed,
            device="cpu",
        )
    )
    learner = PPOLearner(
        LearnerSpec(
            model=cfg.model.name,
            lora=cfg.model.lora,
            ppo=cfg.train,
            stat_buffer_size=cfg.stat_tracking.buffer_size,
            stat_min_count=cfg.stat_tracking.min_count,
            seed=cfg.run.seed,
            model_seed=cfg.model.seed,
            device="cpu",
        )
    )
    scorer = JpegCompressibility()
    prompts = load_prompts(cfg.prompts.source, cfg.prompts.limit)
    size, batches = cfg.sampling.batch_size, cfg.sampling.batches_per_epoch
    history = []
    for epoch in range(epochs):
        worker.set_adapter(learner.adapter())
        epoch_prompt_list = epoch_prompts(prompts, cfg.run.seed, epoch, size * batches)
        trajs = [
            worker.sample(epoch_prompt_list[b * size : (b + 1) * size], batch_seed(cfg.run.seed, epoch, b))
            for b in range(batches)
        ]
        traj = Trajectory.concat(trajs)
        assert traj.policy_version == learner.version == epoch
        images = traj.images.permute(0, 2, 3, 1).numpy()
        rewards = np.asarray(scorer.score(images, traj.prompts).rewards)
        history.append(rewards)
        metrics = learner.train(traj, learner.advantages(traj.prompts, rewards))
        assert np.isfinite(metrics["loss"]) and metrics["optimizer_steps"] >= 1
    return history


@pytest.mark.slow
def test_toy_rlcm_improves_jpeg_compressibility():
    start = time.perf_counter()
    history = run_toy()
    elapsed = time.perf_counter() - start
    first = history[0]
    last = np.concatenate(history[-3:])
    means = [round(float(r.mean()), 3) for r in history]
    t = welch_t(last, first)
    print(f"epoch means (kB, -size): {means}; Welch t = {t:.1f}; {elapsed:.0f} s")
    assert len(first) == 16 and len(last) == 48
    assert last.mean() - first.mean() > 0.3, means
    assert t > 5, (t, means)
