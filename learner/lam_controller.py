"""ROCM's λ rule: keep the divergence term about `ratio` times the reward (paper: "one order of magnitude smaller").

Controlled quantity (per epoch, means over every learner's chains):

    q = λ·D̄ / (ratio·|r̄|)        D̄ = mean Σ_k D_k,  r̄ = mean reward;  target q = 1

Update, bounded by c per epoch (as PPO's adaptive KL coefficient, which also grows when the penalty is too big):

    λ ← λ · clip(q, 1/c, c)

Direction: at the regularized optimum D̄ falls as λ grows (quadratic model r = g·θ, D = θ²/2: D̄ = g²/(2λ²),
so λ·D̄ = g²/(2λ)), hence q too large calls for a larger λ. The fixed-D̄ "solve" λ ← ratio·|r̄|/D̄ moves λ the
other way and runs away (from D̄ = 0 at the LoRA's zero init it would grow λ without end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lam_update(lam: float, reward_mean: float, divergence_mean: float, ratio: float, max_factor: float) -> float:
    """The next λ after an epoch with mean reward `reward_mean` and mean Σ_k D_k `divergence_mean`."""
    if lam <= 0 or ratio <= 0 or max_factor < 1:
        raise ValueError(f"need lam > 0, ratio > 0 and max_factor >= 1, got {lam}, {ratio}, {max_factor}")
    if not (math.isfinite(reward_mean) and math.isfinite(divergence_mean)):
        return lam  # an epoch without numbers leaves λ as it is
    penalty, target = lam * max(divergence_mean, 0.0), ratio * abs(reward_mean)
    if target == 0:
        factor = max_factor if penalty > 0 else 1.0
    else:
        factor = min(max(penalty / target, 1.0 / max_factor), max_factor)
    return lam * factor


@dataclass
class LamController:
    """λ of the next epoch; `fixed` controllers never move (rocm.lam: <number>)."""

    lam: float
    ratio: float = 0.1
    max_factor: float = 2.0
    fixed: bool = False

    def penalty_ratio(self, reward_mean: float, divergence_mean: float) -> float:
        """λ·D̄/|r̄| of an epoch run with the current λ (the quantity the rule keeps near `ratio`)."""
        return self.lam * divergence_mean / abs(reward_mean) if reward_mean else math.inf

    def step(self, reward_mean: float, divergence_mean: float) -> float:
        """Update λ from one epoch's means; returns the new λ."""
        if not self.fixed:
            self.lam = lam_update(self.lam, reward_mean, divergence_mean, self.ratio, self.max_factor)
        return self.lam


def controller_for(settings, resumed_lam: float | None = None) -> LamController:
    """The controller of `ROCMSettings` (`lam` a number: fixed); `resumed_lam` (from a checkpoint) replaces λ_init."""
    if settings.lam == "auto":
        lam = settings.lam_init if resumed_lam is None else resumed_lam
        return LamController(lam, settings.lam_ratio, settings.lam_max_factor)
    return LamController(float(settings.lam), fixed=True)
