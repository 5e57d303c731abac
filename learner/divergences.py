"""f-divergences between the Gaussian transitions of two policies (ROCM's per-step regularizer).

Both policies move x_k to x_{k+1} with the same isotropic std σ and different means, so with
p = N(μ_p, σ²I), q = N(μ_q, σ²I) and Δ = μ_p − μ_q, per latent dimension:

    kl          KL(p‖q)  = Δ² / (2σ²)
    reverse_kl  KL(q‖p)  = Δ² / (2σ²)                       (equal to kl when the stds are equal)
    hellinger   H²(p,q)  = 1 − ∫√(pq) = 1 − exp(−Δ² / (8σ²))
    fisher      F(p‖q)   = E_p‖∇log p − ∇log q‖² = Δ² / σ⁴
    js          JS(p,q)  = ½KL(p‖m) + ½KL(q‖m),  m = ½(p + q)  (no closed form: reparameterized samples)
    none        0

Each is averaged over the latent dimensions (all but the batch dim), like log π in `rollout.policies.lcm`.
"""

from __future__ import annotations

import math

import torch

from learner.divergence_kinds import DIVERGENCES


def gaussian_divergence(
    kind: str,
    mean_p: torch.Tensor,
    mean_q: torch.Tensor,
    std: torch.Tensor | float,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> torch.Tensor:
    """D(N(mean_p, std²I) ‖ N(mean_q, std²I)) per sample [B], averaged over dims; differentiable in both means.

    `std` is a scalar or broadcastable to the means (e.g. [B, 1, 1, 1]). `generator` and `num_samples`
    are used by `js` only (the draws ε of x = μ + σ·ε).
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {list(DIVERGENCES)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    delta = mean_p - mean_q  # Δ
    if kind in ("kl", "reverse_kl"):
        per_dim = delta**2 / (2 * std**2)  # Δ²/(2σ²)
    elif kind == "hellinger":
        per_dim = -torch.expm1(-(delta**2) / (8 * std**2))  # 1 − exp(−Δ²/(8σ²))
    elif kind == "fisher":
        per_dim = delta**2 / std**4  # Δ²/σ⁴
    elif kind == "js":
        per_dim = _js_monte_carlo(delta / std, generator, num_samples)
    else:
        per_dim = torch.zeros_like(delta)
    return per_dim.reshape(per_dim.shape[0], -1).mean(dim=1)


def _js_monte_carlo(scaled_delta: torch.Tensor, generator: torch.Generator | None, num_samples: int) -> torch.Tensor:
    """JS(p,q) per dim from `num_samples` draws x ~ p and x ~ q, in units of σ (δ = Δ/σ).

    Standardized, p = N(δ, 1) and q = N(0, 1); with log m = logsumexp(log p, log q) − log 2:

        JS = ½ E_{x=δ+ε}[log p(x) − log m(x)] + ½ E_{x=ε'}[log q(x) − log m(x)]
    """
    shape = (num_samples, *scaled_delta.shape)
    noise_p = torch.randn(shape, generator=generator, device=scaled_delta.device, dtype=scaled_delta.dtype)
    noise_q = torch.randn(shape, generator=generator, device=scaled_delta.device, dtype=scaled_delta.dtype)
    x_p = scaled_delta + noise_p  # x ~ p, reparameterized
    x_q = noise_q  # x ~ q (its mean is the origin of the standardized frame)
    term_p = _log_ratio_to_mixture(-0.5 * (x_p - scaled_delta) ** 2, -0.5 * x_p**2)
    term_q = _log_ratio_to_mixture(-0.5 * x_q**2, -0.5 * (x_q - scaled_delta) ** 2)
    return 0.5 * (term_p + term_q).mean(dim=0)


def _log_ratio_to_mixture(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log a − log m with m = ½(a + b), from log-densities (shared constants cancel)."""
    return log_a - (torch.logaddexp(log_a, log_b) - math.log(2.0))
