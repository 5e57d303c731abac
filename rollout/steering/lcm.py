"""Steering of the LCM sampler: every step's `denoised_k` (the boundary-conditioned x̂0) is the intermediate image;
FK resamples the particles' denoised_k before the transition to x_{k+1} (`lcm_chain`), the last step's is the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler

from rollout.policies.chain_math import draw_noise, encode_prompts, latent_shape
from rollout.policies.lcm import guidance_embedding, lcm_chain, lcm_timesteps, predict_denoised
from rollout.steering.particles import ParticleRewards, Score, SteeringResult


@torch.no_grad()
def steer_lcm(
    pipe: LatentConsistencyModelPipeline,
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
    original_inference_steps: int = 50,
    eta: float | None = None,
) -> SteeringResult:
    """Sample N = `particles` LCM chains per prompt, steered by `score`, and keep the best final particle of each.

    The noise is drawn as `sample_lcm_trajectory` draws it for the prompts repeated N times each, so best-of-N picks
    among exactly those chains. `resample_at` (FK only) lists the steps k < H−1 after which particles are resampled.
    A reward that raises or returns a non-finite value stops sampling with a RuntimeError naming `reward_name`.
    `eta` belongs to DDIM and is not used.
    """
    if not isinstance(pipe.scheduler, LCMScheduler):
        raise ValueError(f"steer_lcm steers LCM models; this model samples with {type(pipe.scheduler).__name__}")
    state = ParticleRewards.start(
        pipe, prompts, num_steps, generator, score, particles, method, potential, lam, resample_at, reward_name
    )
    device, rows = pipe.unet.device, state.rows
    shape = latent_shape(pipe, len(rows), height, width)
    timesteps = lcm_timesteps(pipe.scheduler, num_steps, original_inference_steps).to(device)
    prompt_embeds = encode_prompts(pipe, rows)
    w_embedding = guidance_embedding(pipe, guidance_scale, len(rows)).to(device)
    x0, noise = draw_noise(generator, shape, num_steps, device)

    def denoise(k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        denoised = predict_denoised(pipe.unet, pipe.scheduler, x, t, prompt_embeds, w_embedding)
        ancestors = state.ancestors(k, denoised)
        return denoised if ancestors is None else denoised[ancestors.to(denoised.device)]

    *_, last = lcm_chain(pipe.scheduler, timesteps, x0 * pipe.scheduler.init_noise_sigma, noise, denoise)
    return state.best(num_steps - 1, last.denoised, state.compute(num_steps))
