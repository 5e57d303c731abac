"""Steering of the DDIM sampler (Stable Diffusion): at step k the intermediate image is x̂0 = (x_k − √(1−ᾱ_t)·ε̂)/√ᾱ_t
from the guided ε̂ of the step. FK resamples the particles' (x̂0, ε̂) — all the transition to x_{k+1} depends on —
before the transition; the output is x_H, decoded, as the stock pipeline's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from rollout.policies.chain_math import draw_noise, latent_shape
from rollout.policies.ddim import (
    DDIMPolicy,
    ddim_prediction,
    ddim_step_mean_std,
    ddim_timesteps,
    encode_prompts_with_negative,
    guided_epsilon,
    previous_timestep,
)
from rollout.steering.particles import ParticleRewards, Score, SteeringResult


@torch.no_grad()
def steer_ddim(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    score: Score,
    particles: int = 4,
    method: str = "best-of-n",
    potential: str = "diff",
    lam: float = 1.0,
    resample_at: Sequence[int] = (),
    *,
    reward_name: str = "reward",
    height: int | None = None,
    width: int | None = None,
    eta: float | None = None,
    original_inference_steps: int | None = None,
) -> SteeringResult:
    """Sample N = `particles` DDIM chains (η = `eta`, default 1: resampled copies need noise to split) per prompt,
    steered by `score`, and keep the best final particle of each.

    The noise is drawn as `sample_ddim_trajectory` draws it for the prompts repeated N times each, so best-of-N picks
    among exactly those chains. `resample_at` (FK only) lists the steps k < H−1 after which particles are resampled.
    `original_inference_steps` belongs to LCM and is not used.
    """
    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise ValueError(f"steer_ddim steers DDIM models; this model samples with {type(pipe.scheduler).__name__}")
    state = ParticleRewards.start(
        pipe, prompts, num_steps, generator, score, particles, method, potential, lam, resample_at, reward_name
    )
    eta = 1.0 if eta is None else eta
    device, rows = pipe.unet.device, state.rows
    shape = latent_shape(pipe, len(rows), height, width)
    timesteps = ddim_timesteps(pipe.scheduler, num_steps).to(device)
    prompt_embeds, negative_embeds = encode_prompts_with_negative(pipe, rows)
    x, noise = draw_noise(generator, shape, num_steps + 1, device)
    x = x * pipe.scheduler.init_noise_sigma
    for k in range(num_steps):
        t = timesteps[k].expand(len(rows))
        eps = guided_epsilon(pipe.unet, x, t, prompt_embeds, negative_embeds, guidance_scale)
        x0_pred, eps_pred = ddim_prediction(pipe.scheduler, eps, x, t)
        ancestors = state.ancestors(k, x0_pred)
        if ancestors is not None:
            x0_pred, eps_pred = x0_pred[ancestors.to(device)], eps_pred[ancestors.to(device)]
        mean, std = ddim_step_mean_std(
            pipe.scheduler, x0_pred, eps_pred, t, previous_timestep(pipe.scheduler, t, num_steps), eta
        )
        x = mean + std * noise[k]
    return state.best(num_steps - 1, x, state.compute(num_steps, DDIMPolicy.unet_images_per_step(guidance_scale)))
