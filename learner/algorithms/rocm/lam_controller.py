"""ROCM's λ rule: λ is the multiplier of a divergence budget δ per chain, as PPO's adaptive KL coefficient.

Per epoch, over every learner's chains (docs/rocm_lambda.md argues the choice against the paper's text):

    D̄ = mean Σ_k D_k                       (the controlled quantity; target δ = rocm.lam_target)
    λ ← clamp(λ · clip(√(D̄/δ), 1/c, c), λ_min, λ_max)

No reward enters the rule, so adding a constant to every reward (which changes no gradient) cannot change λ's
trajectory. D̄ falls as λ grows, both while the policy moves and at the regularized optimum (quadratic model
r = g·θ, D = θ²/2: D̄ = g²/(2λ²)), so the loop is stable; a rule on λ·D̄ is not (at a fixed D̄ it grows with λ).
The square root: at the optimum D̄ ∝ λ⁻², so √(D̄/δ) is the exact factor to the budget (one step, then still),
where D̄/δ itself would overshoot into the 2-cycle λ, g²/(2δλ), λ, …
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lam_update(
    lam: float, divergence_mean: float, target: float, max_factor: float, lam_min: float, lam_max: float
) -> float:
    """The next λ: λ·clip(√(D̄/δ), 1/c, c) clamped to [lam_min, lam_max]; a non-finite D̄ leaves λ."""
    if lam <= 0 or target <= 0 or max_factor < 1 or not 0 < lam_min <= lam_max:
        raise ValueError(
            f"need lam > 0, target > 0, max_factor >= 1 and 0 < lam_min <= lam_max, got {lam}, {target}, {max_factor}, "
            f"{lam_min}, {lam_max}"
        )
    if not math.isfinite(divergence_mean):
        return lam
    factor = min(max(math.sqrt(max(divergence_mean, 0.0) / target), 1.0 / max_factor), max_factor)
    return min(max(lam * factor, lam_min), lam_max)


@dataclass
class LamController:
    """λ of the next epoch; `fixed` controllers never move (rocm.lam: <number>)."""

    lam: float
    target: float = 0.1
    max_factor: float = 1.5
    lam_min: float = 1e-4
    lam_max: float = 1e3
    fixed: bool = False

    def step(self, divergence_mean: float) -> dict[str, float]:
        """Update λ from one epoch run at the current λ; returns that epoch's controlled quantity and target (none if
        fixed)."""
        if self.fixed:
            return {}
        self.lam = lam_update(self.lam, divergence_mean, self.target, self.max_factor, self.lam_min, self.lam_max)
        return {"lam_divergence": divergence_mean, "lam_divergence_target": self.target}


def controller_for(settings, resumed_lam: float | None = None) -> LamController:
    """The controller of `ROCMSettings` (`lam` a number: fixed); `resumed_lam` (from a checkpoint) replaces λ_init."""
    if settings.lam == "auto":
        lam = settings.lam_init if resumed_lam is None else resumed_lam
        return LamController(lam, settings.lam_target, settings.lam_max_factor, settings.lam_min, settings.lam_max)
    return LamController(float(settings.lam), settings.lam_target, fixed=True)
