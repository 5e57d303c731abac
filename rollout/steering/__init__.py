"""Inference-time steering by a reward — best-of-N and Feynman–Kac (FK) steering — one module per sampler as the
policies are (`lcm.py`, `ddim.py`), sharing the resampling math of `particles.py`; `steer` picks by the scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, LCMScheduler

from rollout.steering.ddim import steer_ddim
from rollout.steering.lcm import steer_lcm
from rollout.steering.particles import Score, SteeringResult

STEERERS = {LCMScheduler: steer_lcm, DDIMScheduler: steer_ddim}


def steer(
    pipe,
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
    **options,
) -> SteeringResult:
    """`steer_lcm` or `steer_ddim` by the pipeline's scheduler (`options`: reward_name, height, width and the sampler
    options original_inference_steps, eta); a clear error for a scheduler neither steers."""
    for scheduler, steerer in STEERERS.items():
        if isinstance(pipe.scheduler, scheduler):
            return steerer(
                pipe, prompts, num_steps, guidance_scale, generator, score, particles, method, potential, lam,
                resample_at, **options,
            )  # fmt: skip
    supported = ", ".join(s.__name__ for s in STEERERS)
    used = type(pipe.scheduler).__name__
    raise ValueError(f"steering supports models sampled with {supported}; this one uses {used}")
