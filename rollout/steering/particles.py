"""What every steered sampler shares: the FK potentials, the resampling weights and draws, the particles' reward state
across the scored steps, and the compute a final image costs (Singhal et al. 2025, "A General Framework for
Inference-time Scaling and Steering of Diffusion Models").

P prompts, N particles each, run as one batch of P·N chains. At a scored step k every particle i has a clean estimate
x̂0_k^i; its reward is r_k^i = r(decode(x̂0_k^i)). FK steering, at each step k of `resample_at`, weighs the particles of
a prompt by a potential G_k and resamples them:

    log G_k^i = λ·(r_k^i − r_{k'}^i)            "diff"     (k' the previous scored step; r = 0 before the first)
              = λ·max_{j ≤ k} r_j^i             "max"      (over the scored steps)
              = λ·r_k^i                         "current"
    w_k^i     = softmax_i(log G_k^i)            over the N particles of one prompt
    a^i       ~ Multinomial(w_k)                ancestors; particle i continues from x_k^{a^i}

A resampled particle keeps its own noise ε_k, so copies of one ancestor split at the next transition. The final
image of a prompt is its particle with the highest reward at the last step; best-of-N is FK without resampling.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rollout.policies.chain_math import decode_images
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


def compute_per_image(
    particles: int, num_steps: int, scored_steps: int, prompts: int, unet_images_per_step: int = 1
) -> dict[str, float]:
    """Sampling compute per final image: UNet evaluations N·H·c (c = 2 with classifier-free guidance doubling, else
    1), reward calls (each scores all P·N particles of a step) and images decoded and scored N·S for S scored steps."""
    return {
        "unet_evals_per_image": float(particles * num_steps * unet_images_per_step),
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


def check_steering(
    particles: int, num_steps: int, method: str, potential: str, resample_at: Sequence[int]
) -> list[int]:
    """The sorted resampling steps; ValueError for an option out of range or one the method does not use."""
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
    steps = sorted(set(resample_at))
    if any(not 0 <= k < num_steps - 1 for k in steps):
        raise ValueError(f"resampling steps must lie in 0..{num_steps - 2} (before the last step), got {resample_at}")
    return steps


@dataclass
class SteeringResult:
    """The chosen image and reward of each prompt, every particle's final reward, and the compute spent."""

    images: torch.Tensor  # uint8 [P, 3, H, W]
    rewards: torch.Tensor  # r of the chosen particle [P]
    particle_rewards: torch.Tensor  # r at the last step [P, N]
    compute: dict[str, float]


class ParticleRewards:
    """The reward side of P·N steered chains: scores a step's clean estimates in one call, keeps r_{k'} and the max so
    far per particle, draws the ancestors at the resampling steps and picks each prompt's best final particle."""

    def __init__(
        self,
        rows: list[str],
        particles: int,
        score: Score,
        decode: Callable[[torch.Tensor], torch.Tensor],
        potential: str,
        lam: float,
        resample_at: list[int],
        generator: torch.Generator | None,
        reward_name: str,
    ) -> None:
        self.rows, self.particles, self.score, self.decode = rows, particles, score, decode
        self.potential, self.lam, self.resample_at, self.generator = potential, lam, resample_at, generator
        self.reward_name = reward_name
        self.previous = torch.zeros(len(rows), dtype=torch.float64)
        self.max_so_far = torch.full((len(rows),), -math.inf, dtype=torch.float64)

    @classmethod
    def start(
        cls,
        pipe,
        prompts: Sequence[str],
        num_steps: int,
        generator: torch.Generator | None,
        score: Score,
        particles: int,
        method: str,
        potential: str,
        lam: float,
        resample_at: Sequence[int],
        reward_name: str,
    ) -> ParticleRewards:
        """The state of N = `particles` chains per prompt (`rows`: each prompt N times), decoded by `pipe`'s VAE, once
        `check_steering` accepts the options."""
        steps = check_steering(particles, num_steps, method, potential, resample_at)
        rows = [prompt for prompt in prompts for _ in range(particles)]
        decode = functools.partial(decode_images, pipe)
        return cls(rows, particles, score, decode, potential, lam, steps, generator, reward_name)

    def compute(self, num_steps: int, unet_images_per_step: int = 1) -> dict[str, float]:
        """`compute_per_image` of these chains: the resampling steps and the last are scored."""
        prompts = len(self.rows) // self.particles
        return compute_per_image(self.particles, num_steps, len(self.resample_at) + 1, prompts, unet_images_per_step)

    def rewards(self, k: int, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [P·N, 3, H, W] of the clean latents and their rewards [P·N], scored in one call; a reward that
        raises or is not finite is a RuntimeError naming the reward and the step."""
        images = self.decode(clean)
        try:
            scored = self.score(images.permute(0, 2, 3, 1).cpu().numpy(), self.rows)
            rewards = check_rewards(scored, len(self.rows))
        except Exception as error:
            raise RuntimeError(f"steering: the reward {self.reward_name} failed at step {k}: {error}") from error
        return images, rewards

    def ancestors(self, k: int, clean: torch.Tensor) -> torch.Tensor | None:
        """At a resampling step: the ancestor rows [P·N] (CPU) drawn from the potentials of the scored x̂0; else
        None."""
        if k not in self.resample_at:
            return None
        _, rewards = self.rewards(k, clean)
        log_g = fk_potential(self.potential, rewards, self.previous, self.max_so_far, self.lam)
        chosen = resample(resampling_weights(log_g, self.particles), self.generator).cpu()
        self.previous, self.max_so_far = rewards[chosen], torch.maximum(self.max_so_far, rewards)[chosen]
        return chosen

    def best(self, k: int, final: torch.Tensor, compute: dict[str, float]) -> SteeringResult:
        """Each prompt's particle with the highest reward on the final latents."""
        images, rewards = self.rewards(k, final)
        per_prompt = rewards.reshape(-1, self.particles)
        chosen = per_prompt.argmax(dim=1) + torch.arange(per_prompt.shape[0]) * self.particles
        return SteeringResult(images[chosen.to(images.device)], rewards[chosen], per_prompt, compute)
