"""Clipped PPO (RLCM Algorithm 1) and per-prompt advantages, against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.ppo.learner import LearnerSpec, PPOLearner
from learner.ppo.loss import ppo_loss
from learner.stat_tracker import PerPromptStatTracker
from rlcm.config.schema import load_config
from rollout.policies import sample_trajectory
from rollout.policies.lcm import guidance_embedding, transition_log_prob
from rollout.worker import RolloutSpec, RolloutWorker

# ---------------------------------------------------------------- ppo_loss on hand-made numbers


def test_ppo_loss_hand_numbers():
    eps = 0.2
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -3.0])
    old = torch.tensor([-1.0, 0.3, 2.0, -0.7, 0.0, 1.0])
    new = old + torch.log(ratios)
    # per element: max(−A·ρ, −A·clip(ρ, 0.8, 1.2))
    #   ρ=1.5, A=+1: max(−1.5, −1.2) = −1.2   (clipped: no credit beyond 1+ε)
    #   ρ=1.5, A=−1: max(+1.5, +1.2) = +1.5   (unclipped: pessimistic term)
    #   ρ=0.5, A=+1: max(−0.5, −0.8) = −0.5   (unclipped: pessimistic term)
    #   ρ=0.5, A=−1: max(+0.5, +0.8) = +0.8   (clipped)
    #   ρ=1.1, A=+2: inside the range: −2.2
    #   ρ=0.9, A=−3: inside the range: +2.7
    expected_terms = [-1.2, 1.5, -0.5, 0.8, -2.2, 2.7]
    loss, info = ppo_loss(new, old, adv, eps)
    assert loss.item() == pytest.approx(sum(expected_terms) / 6, abs=1e-6)
    assert info["ratio_min"].item() == pytest.approx(0.5, abs=1e-6)
    assert info["ratio_max"].item() == pytest.approx(1.5, abs=1e-6)
    expected_kl = 0.5 * np.mean(np.log([1.5, 1.5, 0.5, 0.5, 1.1, 0.9]) ** 2)
    assert info["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert info["clipfrac"].item() == pytest.approx(4 / 6, abs=1e-6)


def test_ppo_loss_gradient_zero_where_clipped():
    eps = 0.2
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    old = torch.zeros(5)
    new = torch.log(ratios).requires_grad_(True)
    loss, _ = ppo_loss(new, old, adv, eps)
    loss.backward()
    # d/d logπ of −A·ρ/N is −A·ρ/N where the unclipped term wins, 0 where the clipped constant wins
    expected = torch.tensor([0.0, 1.5, -0.5, 0.0, -2.2]) / 5
    torch.testing.assert_close(new.grad, expected, atol=1e-6, rtol=0)


def test_ppo_loss_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([0.3, -1.7, 2.0])
    lp = torch.tensor([-0.2, 0.1, 1.0])
    loss, info = ppo_loss(lp, lp.clone(), adv, 1e-4)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-7)
    assert info["approx_kl"].item() == 0.0 and info["clipfrac"].item() == 0.0
    assert info["ratio_min"].item() == info["ratio_max"].item() == 1.0


# ---------------------------------------------------------------- sign of the update


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_gradient_step_moves_log_prob_with_advantage_sign(advantage):
    """A tiny Gaussian policy N(μ, σ²): one SGD step on the PPO loss moves log π(a) the advantage's way."""
    mu = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    sigma = 0.7
    action = torch.tensor([[1.0, -0.5]])

    def log_pi():
        return (-((action - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)).mean(dim=1)

    old = log_pi().detach()
    opt = torch.optim.SGD([mu], lr=0.05)
    loss, _ = ppo_loss(log_pi(), old, torch.tensor([advantage]), clip_range=0.2)
    loss.backward()
    opt.step()
    change = (log_pi().detach() - old).item()
    assert change * advantage > 1e-4


# ---------------------------------------------------------------- real toy UNet + LoRA


def _specs(**ppo_overrides):
    cfg = load_config("tiny-cpu")
    ppo = cfg.train.model_copy(update=ppo_overrides)
    learner_spec = LearnerSpec(
        model="tiny", lora=cfg.model.lora, ppo=ppo, stat_buffer_size=16, stat_min_count=16, seed=0, device="cpu"
    )
    rollout_spec = RolloutSpec(model="tiny", lora=cfg.model.lora, num_steps=8, guidance_scale=8.0, device="cpu")
    return learner_spec, rollout_spec


PROMPTS = ["tench", "goldfish", "hen", "ostrich"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(2)
    learner_spec, rollout_spec = _specs(
        clip_range=1e-4, train_batch_size=4, grad_accum_steps=1, inner_epochs=1, learning_rate=1e-4
    )
    learner = PPOLearner(learner_spec)
    # make the adapter non-zero (gaussian init has lora_B = 0, under which any LoRA A would agree)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in learner.pipe.unet.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    worker = RolloutWorker(rollout_spec)
    assert worker.set_adapter(learner.adapter())
    traj = worker.sample(PROMPTS, seed=11)
    return learner, worker, traj


def _recompute_log_probs(unet, scheduler, traj, pipe) -> torch.Tensor:
    w = guidance_embedding(pipe, traj.guidance_scale, len(traj))
    b, h = traj.latents.shape[:2]
    out = torch.zeros(b, h - 1)
    with torch.no_grad():
        for k in range(h - 1):
            out[:, k] = transition_log_prob(
                unet,
                scheduler,
                traj.latents[:, k],
                traj.timesteps[k].expand(b),
                traj.timesteps[k + 1].expand(b),
                traj.latents[:, k + 1],
                traj.prompt_embeds,
                w,
            )
    return out


def test_learner_and_worker_share_the_policy(setup):
    learner, worker, traj = setup
    assert worker.version == learner.version == 0
    assert traj.policy_version == 0
    # the learner's freshly built UNet (own copy, same LoRA init via the adapter) reproduces log π_old
    recomputed = _recompute_log_probs(learner.pipe.unet, learner.pipe.scheduler, traj, learner.pipe)
    assert (recomputed - traj.log_probs).abs().max().item() < 1e-5
    assert (recomputed - traj.log_probs).exp().sub(1).abs().max().item() < 1e-5
    # guard: a worker that did not load the adapter samples under a different policy
    _, rollout_spec = _specs()
    stale = RolloutWorker(rollout_spec)
    stale_lp = _recompute_log_probs(stale.pipe.unet, stale.pipe.scheduler, traj, stale.pipe)
    assert (stale_lp - traj.log_probs).abs().max().item() > 1e-3


def test_ratio_exactly_one_at_first_update(setup):
    learner, worker, traj = setup
    # one minibatch of 4, grad_accum 1 → all H−1 transitions are evaluated before the single optimizer step
    metrics = learner.train(traj, np.array([1.0, -0.5, 0.25, -0.75]))
    assert abs(metrics["ratio_min"] - 1) < 1e-5 and abs(metrics["ratio_max"] - 1) < 1e-5
    assert metrics["approx_kl"] < 1e-10
    assert metrics["clipfrac"] == 0.0  # clip range 1e-4 (Table 1): any real mismatch would be clipped
    assert metrics["optimizer_steps"] == 1.0
    assert learner.version == 1


def test_ppo_update_direction_on_toy_unet():
    """All-positive advantages raise log π of the sampled actions; all-negative lower it."""
    torch.set_num_threads(2)
    for sign in (1.0, -1.0):
        learner_spec, rollout_spec = _specs(clip_range=10.0, train_batch_size=4, grad_accum_steps=1, learning_rate=1e-3)
        learner = PPOLearner(learner_spec)
        traj = sample_trajectory(learner.pipe, PROMPTS, 4, 8.0, torch.Generator().manual_seed(5))
        before = _recompute_log_probs(learner.pipe.unet, learner.pipe.scheduler, traj, learner.pipe)
        learner.train(traj, np.full(4, sign))
        after = _recompute_log_probs(learner.pipe.unet, learner.pipe.scheduler, traj, learner.pipe)
        change = (after - before).mean().item()
        assert change * sign > 0, (sign, change)
        assert abs(change) > 1e-5


def test_ppo_update_rejects_h1():
    torch.set_num_threads(2)
    learner_spec, _ = _specs(train_batch_size=2, grad_accum_steps=2)
    learner = PPOLearner(learner_spec)
    one = sample_trajectory(learner.pipe, PROMPTS, 1, 8.0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="H >= 2"):
        learner.train(one, np.ones(4))
    assert learner.version == 0


def test_advantages_are_clipped():
    """With adv_clip_max=1 an advantage of 100 acts like 1: identical losses/gradients."""
    torch.manual_seed(0)
    unet_grads = []
    for adv in (100.0, 1.0):
        learner_spec, _ = _specs(
            adv_clip_max=1.0, clip_range=10.0, train_batch_size=2, grad_accum_steps=1, learning_rate=1e-3
        )
        learner = PPOLearner(learner_spec)
        traj = sample_trajectory(learner.pipe, PROMPTS[:2], 2, 8.0, torch.Generator().manual_seed(0))
        metrics = learner.train(traj, np.array([adv, adv]))
        unet_grads.append(metrics["loss"])
    assert unet_grads[0] == pytest.approx(unet_grads[1], abs=1e-6)
    assert unet_grads[0] == pytest.approx(-1.0, abs=1e-4)


def test_partial_accumulation_window_still_steps():
    """3 minibatches with grad_accum_steps=2 (e.g. after invalid samples were dropped): one full window
    and one partial window, so two optimizer steps and no gradient left behind."""
    learner_spec, _ = _specs(train_batch_size=2, grad_accum_steps=2, learning_rate=1e-3)
    learner = PPOLearner(learner_spec)
    traj = sample_trajectory(learner.pipe, (PROMPTS * 2)[:6], 2, 8.0, torch.Generator().manual_seed(0))
    metrics = learner.train(traj, np.linspace(-1.0, 1.0, 6))
    assert metrics["optimizer_steps"] == 2.0
    assert all(p.grad is None for p in learner.params)


def test_partial_window_is_weighted_by_its_true_count():
    """A window of 1 minibatch out of grad_accum_steps=2 must give the same (pre-clip) gradient as
    grad_accum_steps=1 on that minibatch: the mean over the samples it has, not half of it."""
    norms = []
    for accum in (1, 2):
        learner_spec, _ = _specs(train_batch_size=2, grad_accum_steps=accum, learning_rate=1e-3, max_grad_norm=1e6)
        learner = PPOLearner(learner_spec)
        with torch.no_grad():
            for name, param in learner.pipe.unet.named_parameters():
                if "lora_B" in name:
                    param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
        traj = sample_trajectory(learner.pipe, PROMPTS[:2], 2, 8.0, torch.Generator().manual_seed(0))
        metrics = learner.train(traj, np.array([-1.0, 1.0]))
        assert metrics["optimizer_steps"] == 1.0
        norms.append(metrics["grad_norm"])
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)


def test_linear_lr_schedule_decays_to_zero_and_resumes():
    learner_spec, _ = _specs(train_batch_size=2, grad_accum_steps=1, learning_rate=1e-3, lr_schedule="linear")
    learner_spec.total_optimizer_steps = 4
    learner = PPOLearner(learner_spec)
    traj = sample_trajectory(learner.pipe, PROMPTS[:2], 2, 8.0, torch.Generator().manual_seed(0))
    lrs = [learner.train(traj, np.array([-1.0, 1.0]))["learning_rate"] for _ in range(2)]
    assert lrs == pytest.approx([1e-3 * 3 / 4, 1e-3 * 2 / 4])
    restored = PPOLearner(learner_spec)
    restored.load_state_dict(learner.state_dict())
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)


# ---------------------------------------------------------------- PerPromptStatTracker


def test_stat_tracker_batch_then_buffer_then_truncation():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)

    # batch 1: 'a' reaches min_count → its own buffer [1, 3]; 'b' has 1 < 2 → whole-batch stats
    adv = tracker.update(["a", "a", "b"], np.array([1.0, 3.0, 10.0]))
    batch_mean, batch_std = 14.0 / 3.0, math.sqrt(((1 - 14 / 3) ** 2 + (3 - 14 / 3) ** 2 + (10 - 14 / 3) ** 2) / 3)
    expected = [(1 - 2) / (1 + 1e-6), (3 - 2) / (1 + 1e-6), (10 - batch_mean) / (batch_std + 1e-6)]
    np.testing.assert_allclose(adv, expected, rtol=1e-9)

    # batch 2: 'a' buffer [1, 3, 5] (mean 3, std √(8/3)); 'b' buffer [10, 20] (mean 15, std 5)
    adv = tracker.update(["a", "b"], np.array([5.0, 20.0]))
    np.testing.assert_allclose(adv, [(5 - 3) / (math.sqrt(8 / 3) + 1e-6), (20 - 15) / (5 + 1e-6)], rtol=1e-9)

    # batch 3: buffer_size 3 drops the oldest: 'a' buffer [3, 5, 7] (mean 5), not [1, 3, 5, 7] (mean 4)
    adv = tracker.update(["a"], np.array([7.0]))
    np.testing.assert_allclose(adv, [(7 - 5) / (math.sqrt(8 / 3) + 1e-6)], rtol=1e-9)
    assert list(tracker.buffers["a"]) == [3.0, 5.0, 7.0]


def test_stat_tracker_below_min_count_uses_batch_statistics():
    tracker = PerPromptStatTracker(buffer_size=16, min_count=16)
    rewards = np.array([-2.0, -1.0, -4.0, -3.0])
    adv = tracker.update(["x", "y", "x", "y"], rewards)
    np.testing.assert_allclose(adv, (rewards - (-2.5)) / (math.sqrt(1.25) + 1e-6), rtol=1e-9)


def test_stat_tracker_rejects_non_finite_and_mismatch():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=1)
    tracker.update(["a"], np.array([1.0]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            tracker.update(["a", "b"], np.array([2.0, bad]))
    assert list(tracker.buffers["a"]) == [1.0] and "b" not in tracker.buffers  # nothing half-recorded
    with pytest.raises(ValueError):
        tracker.update(["a", "b"], np.array([1.0]))
    with pytest.raises(ValueError):
        PerPromptStatTracker(buffer_size=0, min_count=1)


def test_stat_tracker_state_round_trip():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    tracker.update(["a", "a", "b"], np.array([1.0, 3.0, 10.0]))
    clone = PerPromptStatTracker(buffer_size=1, min_count=1)
    clone.load_state_dict(tracker.state_dict())
    np.testing.assert_array_equal(
        clone.update(["a", "b"], np.array([5.0, 20.0])), tracker.update(["a", "b"], np.array([5.0, 20.0]))
    )
