"""ROCM's λ rule (learner/algorithms/rocm/lam_controller.py): the bounded, clamped update, its stability, and its
blindness to reward offsets."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from learner.algorithms.rocm.lam_controller import LamController, controller_for, lam_update
from learner.algorithms.rocm.learner import ROCMLearner, ROCMLearnerSpec
from learner.algorithms.rocm.settings import ROCMSettings
from rewards_service.registry import build_differentiable_reward
from rlcm.config.prompts import epoch_prompts, load_prompts
from rollout.lora import LoraSettings


def test_update_moves_lambda_by_the_divergence_to_budget_ratio_within_the_bound():
    # D̄/δ = 0.16/0.1 = 1.6: over budget, strengthen λ by √1.6
    assert lam_update(0.5, 0.16, 0.1, max_factor=2.0, lam_min=1e-4, lam_max=1e3) == pytest.approx(0.5 * 1.6**0.5)
    assert lam_update(0.5, 0.025, 0.1, 2.0, 1e-4, 1e3) == pytest.approx(0.25)  # √(1/4): exactly the bound 1/c
    assert lam_update(0.5, 100.0, 0.1, 1.5, 1e-4, 1e3) == pytest.approx(0.75)  # far off: ×c
    assert lam_update(0.5, 1e-6, 0.1, 1.5, 1e-4, 1e3) == pytest.approx(0.5 / 1.5)  # ÷c
    assert lam_update(0.2, 0.1, 0.1, 2.0, 1e-4, 1e3) == pytest.approx(0.2)  # on budget: unchanged


def test_update_clamps_and_edge_cases():
    assert lam_update(0.8, 10.0, 0.1, 2.0, 1e-4, 1.0) == 1.0  # lam_max
    assert lam_update(0.01, 0.0, 0.1, 2.0, 0.008, 1.0) == 0.008  # lam_min
    assert lam_update(0.3, 0.0, 0.1, 2.0, 1e-4, 1e3) == pytest.approx(
        0.15
    )  # no divergence yet (LoRA at zero): relax λ by 1/c
    assert lam_update(0.3, -1e-9, 0.1, 2.0, 1e-4, 1e3) == pytest.approx(0.15)  # a rounding-negative D̄ counts as 0
    assert lam_update(0.3, math.nan, 0.1, 2.0, 1e-4, 1e3) == 0.3  # an epoch without numbers leaves λ
    with pytest.raises(ValueError, match="lam > 0"):
        lam_update(0.0, 1.0, 0.1, 2.0, 1e-4, 1e3)
    with pytest.raises(ValueError, match="lam_min <= lam_max"):
        lam_update(0.1, 1.0, 0.1, 2.0, 1.0, 0.5)


def test_controller_settles_on_a_regularized_quadratic():
    """r = r0 + g·θ, D = θ²/2 at its λ-optimum θ = g/λ: D̄ = g²/(2λ²) → δ, λ → g/√(2δ), and stays there (no 2-cycle)."""
    g, target = 3.0, 0.1

    def divergence(lam):
        return (g / lam) ** 2 / 2

    controller = LamController(lam=0.01, target=target, max_factor=1.5)
    lams = []
    for _ in range(40):
        row = controller.step(divergence(controller.lam))
        lams.append(controller.lam)
    assert lams[-1] == lams[-10]
    assert row == {"lam_divergence": pytest.approx(target, rel=1e-6), "lam_divergence_target": target}
    assert controller.lam == pytest.approx(g / math.sqrt(2 * target), rel=1e-6)


def test_controller_for_settings():
    fixed = controller_for(ROCMSettings(lam=0.3))
    assert fixed.fixed and fixed.step(100.0) == {} and fixed.lam == 0.3
    auto = controller_for(
        ROCMSettings(lam="auto", lam_target=0.05, lam_init=0.2, lam_max_factor=1.2, lam_min=0.01, lam_max=5.0)
    )
    assert (auto.lam, auto.target, auto.max_factor, auto.lam_min, auto.lam_max, auto.fixed) == (
        0.2,
        0.05,
        1.2,
        0.01,
        5.0,
        False,
    )
    assert controller_for(ROCMSettings(lam="auto"), resumed_lam=0.0123).lam == 0.0123
    with pytest.raises(ValueError, match="lam must be auto or a number >= 0"):
        ROCMSettings(lam=-1.0)
    with pytest.raises(ValueError):
        ROCMSettings(lam="automatic")
    with pytest.raises(ValueError, match="lam_min <= lam_init <= lam_max"):
        ROCMSettings(lam="auto", lam_init=5.0, lam_max=1.0)


def test_auto_is_resolved_before_the_objective():
    from learner.algorithms.rocm.objective import rocm_objective

    with pytest.raises(ValueError, match="lam must be a number >= 0, got 'auto'.*controller"):
        rocm_objective(None, ["a cat"], 4, 8.0, None, None, "kl", "auto")


class ShiftedReward(torch.nn.Module):
    """The differentiable smoothness reward plus a constant."""

    def __init__(self, shift: float):
        super().__init__()
        self.inner, self.shift = build_differentiable_reward("smoothness"), shift

    def forward(self, images, prompts):
        return self.inner(images, prompts) + self.shift


def test_reward_offset_leaves_the_lambda_trajectory_unchanged():
    """Toy ROCM, λ auto: every reward + 10 changes no gradient, so the weights, D̄ and λ of every epoch are bitwise the
    same."""
    settings = ROCMSettings(lam="auto", lam_target=0.01, learning_rate=1e-2, max_grad_norm=5.0, batch_size=2)
    lora = LoraSettings(
        rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"]
    )
    prompts = load_prompts("imagenet_animals", 8)

    def trajectory(shift: float) -> tuple[list[float], list[float]]:
        spec = ROCMLearnerSpec(
            model="tiny",
            lora=lora,
            rocm=settings,
            num_steps=2,
            guidance_scale=8.0,
            reward_factory=functools.partial(ShiftedReward, shift),
            device="cpu",
        )
        learner, controller, lams, rewards = ROCMLearner(spec), controller_for(settings), [], []
        for epoch in range(3):
            lams.append(controller.lam)
            metrics = learner.train(epoch_prompts(prompts, 0, epoch, learner.prompts_per_epoch), controller.lam)
            controller.step(metrics["divergence_mean"])
            rewards.append(metrics["reward_mean"])
        return lams + [controller.lam], rewards

    lams, rewards = trajectory(0.0)
    shifted_lams, shifted_rewards = trajectory(10.0)
    assert shifted_lams == lams and len(set(lams)) > 2, lams  # λ moved, and identically
    assert shifted_rewards == pytest.approx([r + 10 for r in rewards], abs=1e-5)
