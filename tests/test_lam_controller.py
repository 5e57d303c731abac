"""ROCM's λ rule (learner/lam_controller.py): the bounded multiplicative update and its direction."""

from __future__ import annotations

import math

import pytest

from learner.lam_controller import LamController, controller_for, lam_update
from learner.settings import ROCMSettings


def test_update_moves_lambda_by_the_penalty_to_target_ratio_within_the_bound():
    # target = 0.1·|−4| = 0.4; penalty 0.5·1.0 = 0.5 → factor 1.25 (penalty too big: strengthen λ)
    assert lam_update(0.5, -4.0, 1.0, ratio=0.1, max_factor=2.0) == pytest.approx(0.5 * 1.25)
    # penalty 0.5·0.4 = 0.2 → factor 0.5 (exactly the bound)
    assert lam_update(0.5, 4.0, 0.4, ratio=0.1, max_factor=2.0) == pytest.approx(0.25)
    # far off: clipped to ×c and ×1/c
    assert lam_update(0.5, 4.0, 100.0, ratio=0.1, max_factor=1.5) == pytest.approx(0.75)
    assert lam_update(0.5, 4.0, 1e-6, ratio=0.1, max_factor=1.5) == pytest.approx(0.5 / 1.5)
    # on target: unchanged
    assert lam_update(0.2, 3.0, 1.5, ratio=0.1, max_factor=2.0) == pytest.approx(0.2)


def test_update_edge_cases():
    assert lam_update(0.3, 2.0, 0.0, 0.1, 2.0) == pytest.approx(0.15)  # no divergence yet: relax λ
    assert lam_update(0.3, 0.0, 1.0, 0.1, 2.0) == pytest.approx(0.6)  # zero reward, positive penalty: strengthen
    assert lam_update(0.3, 0.0, 0.0, 0.1, 2.0) == 0.3
    assert lam_update(0.3, math.nan, 1.0, 0.1, 2.0) == 0.3  # an epoch without numbers leaves λ
    with pytest.raises(ValueError, match="lam > 0"):
        lam_update(0.0, 1.0, 1.0, 0.1, 2.0)


def test_controller_converges_on_a_regularized_quadratic():
    """Reward r = r0 + g·θ, D = θ²/2, θ at its λ-optimum g/λ: the rule drives λ·D/|r| to the ratio."""
    r0, g = 5.0, 1.0

    def epoch(lam):
        theta = g / lam
        return r0 + g * theta, theta**2 / 2

    controller = LamController(lam=10.0, ratio=0.1, max_factor=2.0)
    for _ in range(30):
        controller.step(*epoch(controller.lam))
    reward, divergence = epoch(controller.lam)
    assert controller.penalty_ratio(reward, divergence) == pytest.approx(0.1, rel=1e-6)


def test_controller_for_settings():
    fixed = controller_for(ROCMSettings(lam=0.3))
    assert fixed.fixed and fixed.step(1.0, 100.0) == 0.3
    auto = controller_for(ROCMSettings(lam="auto", lam_ratio=0.05, lam_init=0.2, lam_max_factor=1.5))
    assert (auto.lam, auto.ratio, auto.max_factor, auto.fixed) == (0.2, 0.05, 1.5, False)
    assert controller_for(ROCMSettings(lam="auto"), resumed_lam=0.0123).lam == 0.0123
    with pytest.raises(ValueError, match="lam must be auto or a number >= 0"):
        ROCMSettings(lam=-1.0)
    with pytest.raises(ValueError):
        ROCMSettings(lam="automatic")


def test_auto_is_resolved_before_the_objective():
    from learner.rocm import rocm_objective

    with pytest.raises(ValueError, match="lam must be a number >= 0, got 'auto'.*controller"):
        rocm_objective(None, ["a cat"], 4, 8.0, None, None, "kl", "auto")
