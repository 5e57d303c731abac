"""Two measures of a tuned policy, the same for every algorithm: how far it moved from the base, and how varied it
stays.

Σ_k KL(π_θ ‖ π_base) per chain: along a chain x_0 … sampled by π_θ (the recorded trajectory), at each state x_k
    both policies are Gaussians with the same std σ_k, so KL_k = Δ_k²/(2σ_k²) per latent dim with
    Δ_k = mean_θ,k − mean_base,k (the UNet with its LoRA on, then off), averaged over dims
    (`learner.divergences.gaussian_divergence`), summed over the chain's actions (LCM: H−1, DDIM: H).
diversity: for each prompt, the mean pairwise RMS distance between its images (pixels in [0, 1]) drawn
    from different noise; averaged over prompts. 0 = the policy gives one image per prompt whatever the noise.
"""

from __future__ import annotations

import itertools

import torch

from learner.divergences import gaussian_divergence
from rollout.policies import policy_for
from rollout.trajectory import Trajectory


@torch.no_grad()
def kl_to_base(pipe, trajectory: Trajectory) -> torch.Tensor:
    """Σ_k KL(π_θ(·|x_k) ‖ π_base(·|x_k)) per chain [B] at the trajectory's recorded states, for the policy of `pipe`
    (LCM or DDIM: `rollout.policies`, the functions PPO recomputes log π with)."""
    unet, batch = pipe.unet, len(trajectory)
    transitions = policy_for(pipe).transitions(pipe, trajectory.to(unet.device))
    rows, total = torch.arange(batch, device=unet.device), torch.zeros(batch, dtype=torch.float64)
    for k in range(trajectory.log_probs.shape[1]):
        step = torch.full((batch,), k, device=unet.device)
        mean, std = transitions.gaussian(unet, rows, step)
        unet.disable_adapters()
        try:
            mean_base, _ = transitions.gaussian(unet, rows, step)
        finally:
            unet.enable_adapters()
        total += gaussian_divergence("kl", mean, mean_base, std).double().cpu()
    return total


def pairwise_diversity(images: torch.Tensor, per_prompt: int) -> float:
    """Mean over prompts of the mean pairwise RMS distance between one prompt's images.

    `images`: uint8 [P·N, 3, H, W], the N = `per_prompt` images of each prompt consecutive.
    """
    if per_prompt < 2 or len(images) % per_prompt:
        raise ValueError(f"need at least 2 images per prompt and a multiple of {per_prompt} images, got {len(images)}")
    pixels = images.double().div(255).reshape(len(images) // per_prompt, per_prompt, -1)
    distances = [
        (group[i] - group[j]).pow(2).mean().sqrt()
        for group in pixels
        for i, j in itertools.combinations(range(per_prompt), 2)
    ]
    return float(torch.stack(distances).mean())
