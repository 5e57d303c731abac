"""The clipped PPO loss and the hook through which an algorithm supplies its own per-call loss.

With ρ = exp(log π_θ(x_{k+1}|x_k) − log π_old(x_{k+1}|x_k)) and advantage A_i (RLCM Algorithm 1, DDPO):

    loss = mean_{i,k} max(−A_i·ρ, −A_i·clip(ρ, 1−ε, 1+ε))

`ppo_update` calls `loss_fn(log_prob, old_log_prob, advantages, settings, extras)` once per minibatch call;
`clipped_ppo_loss` is the default, GRPO's adds β·KL to the base (`learner.algorithms.grpo.loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from learner.ppo.settings import PPOSettings
from rollout.policies import Transitions


@dataclass
class StepExtras:
    """What a loss term beyond the surrogate may use at one call: the UNet, the chains, the call's rows i and steps k,
    and π_θ's Gaussian N(mean, std²) there."""

    unet: torch.nn.Module
    transitions: Transitions
    rows: torch.Tensor
    k: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class LossFn(Protocol):
    """An algorithm's per-call loss: (loss to minimize, detached diagnostics averaged over the update)."""

    def __call__(
        self,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        settings: PPOSettings,
        extras: StepExtras,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def ppo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)); plus approx_kl, clipfrac, ratio."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        info = {
            "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio_min": ratio.min(),
            "ratio_max": ratio.max(),
        }
    return loss, info


def clipped_ppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    settings: PPOSettings,
    extras: StepExtras,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The default `LossFn`: the clipped surrogate with ε = settings.clip_range (RLCM, DDPO)."""
    return ppo_loss(log_prob, old_log_prob, advantages, settings.clip_range)
