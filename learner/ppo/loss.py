"""The clipped PPO loss and the hook through which an algorithm supplies its own per-call loss.

With ρ = exp(log π_θ(x_{k+1}|x_k) − log π_old(x_{k+1}|x_k)) and advantage A_i (RLCM Algorithm 1, DDPO):

    loss = mean_{i,k} max(−A_i·ρ, −A_i·clip(ρ, 1−ε, 1+ε))

`ppo_update` calls `loss_fn(log_prob, old_log_prob, advantages, settings, extras)` once per minibatch call;
`clipped_ppo_loss` is the default, GRPO's adds β·KL to the base (`learner.algorithms.grpo.loss`). A loss term that needs
another UNet evaluation of the call's pairs asks `extras.evaluate(fn)`: with `pairs_per_call` it runs once for all the
calls that share one UNet call, and each call gets its own rows of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from learner.ppo.settings import PPOSettings
from rollout.policies import Transitions

PairFn = Callable[[torch.nn.Module, Transitions, torch.Tensor, torch.Tensor], torch.Tensor]  # (unet, chains, i, k)


@dataclass
class SharedEvaluations:
    """Per-pair quantities at the pairs of one UNet call (several minibatch calls), each `PairFn` run once."""

    unet: torch.nn.Module
    transitions: Transitions
    rows: torch.Tensor
    k: torch.Tensor
    values: dict[PairFn, torch.Tensor] = field(default_factory=dict)

    def evaluate(self, fn: PairFn) -> torch.Tensor:
        if fn not in self.values:
            self.values[fn] = fn(self.unet, self.transitions, self.rows, self.k)
        return self.values[fn]


@dataclass
class StepExtras:
    """What a loss term beyond the surrogate may use at one call: the UNet, the chains, the call's rows i and steps k,
    and π_θ's Gaussian N(mean, std²) there; `shared`/`span`: the UNet call this call is part of, and its rows there."""

    unet: torch.nn.Module
    transitions: Transitions
    rows: torch.Tensor
    k: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    shared: SharedEvaluations | None = None
    span: slice | None = None

    def evaluate(self, fn: PairFn) -> torch.Tensor:
        """fn(unet, transitions, rows, k) at this call's pairs (computed once per UNet call when calls share one)."""
        if self.shared is None or self.span is None:
            return fn(self.unet, self.transitions, self.rows, self.k)
        return self.shared.evaluate(fn)[self.span]


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
