"""Inference-time steering of the LCM sampler by a reward: best-of-N and Feynman–Kac (FK) steering (Singhal et al.
2025, "A General Framework for Inference-time Scaling and Steering of Diffusion Models").

P prompts, N particles each, run as one batch of P·N chains through the LCM chain (`lcm_chain`). At step k every
particle i has a clean estimate x̂0_k^i (`Step.denoised`); its reward is r_k^i = r(decode(x̂0_k^i)). FK steering, at
each step k of `resample_at`, weighs the particles of a prompt by a potential G_k and resamples them:

    log G_k^i = λ·(r_k^i − r_{k'}^i)            "diff"     (k' the previous scored step; r = 0 before the first)
              = λ·max_{j ≤ k} r_j^i             "max"      (over the scored steps)
              = λ·r_k^i                         "current"
    w_k^i     = softmax_i(log G_k^i)            over the N particles of one prompt
    a^i       ~ Multinomial(w_k)                ancestors; particle i continues from x_k^{a^i}

A resampled particle keeps its own noise ε_k, so copies of one ancestor split at the next transition. The final
image of a prompt is its particle with the highest reward at the last step; best-of-N is FK without resampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler

from rollout.policies.chain_math import decode_images, draw_noise, encode_prompts, latent_shape
from rollout.policies.lcm import guidance_embedding, lcm_chain, lcm_timesteps, predict_denoised
from rollout.steering_kinds import METHODS, POTENTIALS

Score = Callable[[np.ndarray, list[str]], np.ndarray]
"""A reward: uint8 images [B, H, W, 3] and B prompts in, B float rewards out."""


def fk_potential(
    kind: str, rewards_now: torch.Tensor, rewards_prev: torch.Tensor, max_so_far: torch.Tensor, lam: float
) -> torch.Tensor:
    """log G_k per particle: λ(r_k − r_{k'}) ("diff"), λ·max(max_so_far, r_k) ("max") or λ·r_k ("current").

    `max_so_far` is the max over the scored steps before k (−inf before the first)."""
    if kind == "diff":
        return lam * (rewards_now - rewards_prev)
    if kind == "max":
        return lam * torch.maximum(max_so_far, rewards_now)
    if kind == "current":
        return lam * rewards_now
    raise ValueError(f"unknown FK potential {kind!r}; expected one of {', '.join(POTENTIALS)}")


def resampling_weights(log_potentials: torch.Tensor, particles: int) -> torch.Tensor:
    """w [P, N]: softmax of log G over the N particles of each prompt (rows of `log_potentials` [P·N] by prompt)."""
    return torch.softmax(log_potentials.reshape(-1, particles), dim=1)


def resample(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor rows [P·N]: N multinomial draws per prompt from its weights [P, N], offset to the prompt's rows."""
    prompts, particles = weights.shape
    device = generator.device if generator is not None else weights.device
    drawn = torch.multinomial(weights.to(device), particles, replacement=True, generator=generator)
    offsets = torch.arange(prompts, device=device).unsqueeze(1) * particles
    return (drawn + offsets).reshape(-1).to(weights.device)


@dataclass
class SteeringResult:
    """The chosen image and reward of each prompt, every particle's final reward, and the compute spent."""

    images: torch.Tensor  # uint8 [P, 3, H, W]
    rewards: torch.Tensor  # r of the chosen particle [P]
    particle_rewards: torch.Tensor  # r at the last step [P, N]
    compute: dict[str, float]


def compute_per_image(particles: int, num_steps: int, scored_steps: int, prompts: int) -> dict[str, float]:
    """Sampling compute per final image: UNet evaluations N·H, reward calls (each scores all P·N particles of a
    step) and images decoded and scored N·S for S scored steps."""
    return {
        "unet_evals_per_image": float(particles * num_steps),
        "reward_calls_per_image": scored_steps / prompts,
        "images_scored_per_image": float(particles * scored_steps),
    }


def check_rewards(rewards: np.ndarray, count: int) -> torch.Tensor:
    """The rewards as float64 [count]; ValueError if there are not `count` of them or one is not finite."""
    values = np.asarray(rewards, dtype=np.float64)
    if values.shape != (count,):
        raise ValueError(f"expected {count} rewards, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"non-finite or invalid reward {values[bad[0]]} for particle {bad[0]}")
    return torch.from_numpy(values)


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
) -> SteeringResult:
    """Sample N = `particles` LCM chains per prompt, steered by `score`, and keep the best final particle of each.

    The noise is drawn as `sample_lcm_trajectory` draws it for the prompts repeated N times each, so best-of-N picks
    among exactly those chains. `resample_at` (FK only) lists the steps k < H−1 after which particles are resampled.
    A reward that raises or returns a non-finite value stops sampling with a RuntimeError naming `reward_name`.
    """
    if not isinstance(pipe.scheduler, LCMScheduler):
        raise ValueError(
            f"steering supports LCM models so far; this model samples with {type(pipe.scheduler).__name__}"
        )
    if particles < 1:
        raise ValueError(f"particles must be at least 1, got {particles}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if method not in METHODS:
        raise ValueError(f"unknown steering method {method!r}; expected one of {', '.join(METHODS)}")
    if potential not in POTENTIALS:
        raise ValueError(f"unknown FK potential {potential!r}; expected one of {', '.join(POTENTIALS)}")
    if resample_at and method != "fk":
        raise ValueError(f"resampling steps apply to FK steering, not {method}")
    resample_steps = sorted(set(resample_at))
    if any(not 0 <= k < num_steps - 1 for k in resample_steps):
        raise ValueError(f"resampling steps must lie in 0..{num_steps - 2} (before the last step), got {resample_at}")

    device = pipe.unet.device
    rows = [prompt for prompt in prompts for _ in range(particles)]
    shape = latent_shape(pipe, len(rows), height, width)
    timesteps = lcm_timesteps(pipe.scheduler, num_steps, original_inference_steps).to(device)
    prompt_embeds = encode_prompts(pipe, rows)
    w_embedding = guidance_embedding(pipe, guidance_scale, len(rows)).to(device)
    x0, noise = draw_noise(generator, shape, num_steps, device)

    def rewards_of(k: int, denoised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = decode_images(pipe, denoised)
        try:
            rewards = check_rewards(score(images.permute(0, 2, 3, 1).cpu().numpy(), rows), len(rows))
        except Exception as error:
            raise RuntimeError(f"steering: the reward {reward_name} failed at step {k}: {error}") from error
        return images, rewards

    rewards_prev = torch.zeros(len(rows), dtype=torch.float64)
    max_so_far = torch.full((len(rows),), -math.inf, dtype=torch.float64)

    def denoise(k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal rewards_prev, max_so_far
        denoised = predict_denoised(pipe.unet, pipe.scheduler, x, t, prompt_embeds, w_embedding)
        if k not in resample_steps:
            return denoised
        _, rewards = rewards_of(k, denoised)
        log_g = fk_potential(potential, rewards, rewards_prev, max_so_far, lam)
        ancestors = resample(resampling_weights(log_g, particles), generator).cpu()
        rewards_prev, max_so_far = rewards[ancestors], torch.maximum(max_so_far, rewards)[ancestors]
        return denoised[ancestors.to(denoised.device)]

    *_, last = lcm_chain(pipe.scheduler, timesteps, x0 * pipe.scheduler.init_noise_sigma, noise, denoise)
    images, rewards = rewards_of(num_steps - 1, last.denoised)
    per_prompt = rewards.reshape(-1, particles)
    best = per_prompt.argmax(dim=1) + torch.arange(len(prompts)) * particles
    return SteeringResult(
        images=images[best.to(images.device)],
        rewards=rewards[best],
        particle_rewards=per_prompt,
        compute=compute_per_image(particles, num_steps, len(resample_steps) + 1, len(prompts)),
    )
