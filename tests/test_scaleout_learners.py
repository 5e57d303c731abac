"""Learner group (DDP over gloo) and the behaviour log-probs used by PPO on stale data."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from learner.group import LearnerGroup
from learner.ppo.learner import LearnerSpec, PPOLearner
from rlcm.config.schema import load_config
from rollout.worker import RolloutSpec, RolloutWorker


def specs(train_batch_size: int):
    config = load_config(None, [f"train.train_batch_size={train_batch_size}", "train.grad_accum_steps=1"])
    rollout = RolloutSpec(model="tiny", lora=config.model.lora, num_steps=4, guidance_scale=8.0)
    learner = LearnerSpec(
        model="tiny", lora=config.model.lora, ppo=config.train, stat_buffer_size=16, stat_min_count=16
    )
    return rollout, learner


def trajectories(rollout: RolloutSpec, learner: PPOLearner, n: int = 2):
    worker = RolloutWorker(rollout)
    worker.set_adapter(learner.adapter())
    return [worker.sample(["cat", "dog", "cat", "fish"], seed=i) for i in range(n)]


@pytest.mark.slow
def test_two_learners_equal_one_on_the_concatenated_batch(ray_local):
    rollout, spec1 = specs(8)
    _, spec2 = specs(4)
    initial = PPOLearner(spec1)
    batches = trajectories(rollout, initial)
    refs = [ray.put(t) for t in batches]
    rewards, valid = np.array([1.0, -1.0, 2.0, 0.5, -0.3, 0.1, 0.9, -2.0]), np.ones(8, dtype=bool)
    adapters = []
    for spec, m in [(spec1, 1), (spec2, 2)]:
        group = LearnerGroup(spec, m, cpus=0.5, gpus=0.0, torch_threads=1)
        try:
            ray.get(group.train(rewards, valid, *refs))
            adapters.append(ray.get(group.adapter()).state_dict)
        finally:
            group.shutdown()
    one, two = adapters
    assert one.keys() == two.keys()
    start = initial.adapter().state_dict
    assert max((one[k] - start[k]).abs().max() for k in one) > 1e-3  # the update moved the weights (lr 1e-2)
    for k in one:  # equal up to fp32 summation order, amplified by Adam's normalisation
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4)


def test_stale_batch_uses_recorded_behaviour_log_probs():
    rollout, spec = specs(8)
    learner = PPOLearner(spec)
    batch = trajectories(rollout, learner, n=1)[0]
    advantages = np.array([1.0, -1.0, 1.0, -1.0])
    fresh = learner.train(batch, advantages)
    assert fresh["ratio_min"] == pytest.approx(1.0, abs=1e-5) and fresh["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    stale = learner.train(batch, advantages)  # policy v1 on data sampled by v0: ratio = π_1 / π_0(recorded)
    assert batch.policy_version == 0 and learner.version == 2
    assert stale["ratio_max"] - stale["ratio_min"] > 1e-4
