"""DiffusionNFT's math as pure functions, in the paper's symbols (Zheng et al., 2025, Eq. (8) and its released code).

For a clean sample x0 the policy generated, its reward's advantage A, a training timestep t and noise ε:

    r        = clip(A/A_max, −1, 1)/2 + 1/2                      optimality probability in [0, 1]
    x_t      = √ᾱ_t·x0 + √(1−ᾱ_t)·ε                               the model's forward process
    p⁺       = (1−β)·p_old(x_t, t) + β·p_θ(x_t, t)               implicit positive policy
    p⁻       = (1+β)·p_old(x_t, t) − β·p_θ(x_t, t)               implicit negative policy
    ℓ±       = mean_dims (p± − x0)² / w±,  w± = sg(mean_dims |p± − x0|) (adaptive weighting; w = 1 without it)
    loss     = mean_i A_max·(r·ℓ⁺ + (1−r)·ℓ⁻)/β  [+ c_KL·mean_i mean_dims (p_θ − p_base)²]

p is the clean-image prediction x̂0 (the paper's flow-matching code writes x̂0 = x_t − t·v): the LCM's denoised output
with its boundary condition, a DDIM model's x̂0 from its ε, v or x̂0 output. sg: stop-gradient; p_old and p_base carry
no gradient.
θ_old then follows θ: θ_old ← η·θ_old + (1−η)·θ, η = min(rate·(s − flat), η_max) after s optimizer steps (0 before
`flat`).
"""

from __future__ import annotations

import torch

WEIGHT_FLOOR = 1e-5  # the authors' clip of the adaptive weight


def optimality(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clip(A/A_max, −1, 1)/2 + 1/2."""
    return (advantages / adv_clip_max).clamp(-1.0, 1.0) / 2 + 0.5


def forward_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, ᾱ_t per sample [B]."""
    a = alpha_bar.view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def weighted_error(prediction: torch.Tensor, x0: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """ℓ = mean_dims (p − x0)² / w per sample, w = sg(mean_dims |p − x0|) clipped at 1e-5 (adaptive), else 1."""
    error = _per_sample((prediction - x0) ** 2)
    if not adaptive:
        return error
    weight = _per_sample((prediction.detach() - x0).abs()).clamp(min=WEIGHT_FLOOR)
    return error / weight


def nft_loss(
    p_theta: torch.Tensor,
    p_old: torch.Tensor,
    x0: torch.Tensor,
    r: torch.Tensor,
    beta: float,
    adv_clip_max: float,
    adaptive: bool = True,
    p_base: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The NFT loss of one training call (mean over its samples) and detached diagnostics."""
    p_old = p_old.detach()
    positive = (1 - beta) * p_old + beta * p_theta  # p⁺
    negative = (1 + beta) * p_old - beta * p_theta  # p⁻
    l_pos = weighted_error(positive, x0, adaptive)  # ℓ⁺
    l_neg = weighted_error(negative, x0, adaptive)  # ℓ⁻
    loss = (adv_clip_max * (r * l_pos + (1 - r) * l_neg) / beta).mean()
    with torch.no_grad():
        info = {
            "positive_loss": l_pos.mean(),
            "negative_loss": l_neg.mean(),
            "old_deviation": ((p_theta - p_old) ** 2).mean(),
            "optimality_mean": r.mean(),
        }
    if p_base is not None and kl_coef > 0:
        kl = _per_sample((p_theta - p_base.detach()) ** 2).mean()
        loss = loss + kl_coef * kl
        info["kl_to_base"] = kl.detach()
    return loss, info


def old_decay(optimizer_steps: int, rate: float, eta_max: float, flat_steps: int = 0) -> float:
    """η after s = `optimizer_steps` steps: 0 before `flat_steps`, then min(rate·(s − flat), η_max) (the authors')."""
    if optimizer_steps < flat_steps:
        return 0.0
    return min(rate * (optimizer_steps - flat_steps), eta_max)


@torch.no_grad()
def soft_update(old: list[torch.Tensor], new: list[torch.Tensor], eta: float) -> None:
    """θ_old ← η·θ_old + (1−η)·θ, in place."""
    for target, source in zip(old, new, strict=True):
        target.copy_(eta * target + (1 - eta) * source.to(target.dtype))
