"""GRPO's loss: the clipped surrogate plus β·KL(π_θ ‖ π_base) per step at the recorded state x_k (Flow-GRPO).

π_base is the same UNet with its LoRA disabled; both Gaussians share σ_k, so the KL is ‖mean_θ − mean_base‖²/(2σ_k²)
(`learner.divergences`). β = `grpo.kl_coef`; 0 leaves the surrogate alone (and the base is never run). The base runs
once per UNet call of the update, at all its pairs (`StepExtras.evaluate`).
"""

from __future__ import annotations

import torch

from learner.divergences import gaussian_divergence
from learner.ppo.loss import StepExtras, ppo_loss
from rollout.policies import Transitions


@torch.no_grad()
def base_mean(unet: torch.nn.Module, transitions: Transitions, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean of the frozen base policy (LoRA disabled) at the same state."""
    unet.disable_adapters()
    try:
        return transitions.gaussian(unet, rows, k)[0]
    finally:
        unet.enable_adapters()


def grpo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, settings, extras: StepExtras
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = clipped surrogate + β·mean KL(π_θ ‖ π_base); logs the KL as `kl_to_base` when β > 0."""
    loss, info = ppo_loss(log_prob, old_log_prob, advantages, settings.clip_range)
    if settings.kl_coef > 0:
        kl = gaussian_divergence("kl", extras.mean, extras.evaluate(base_mean), extras.std).mean()
        loss, info["kl_to_base"] = loss + settings.kl_coef * kl, kl.detach()
    return loss, info
