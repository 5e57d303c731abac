"""The sampler policies, one module each, chosen by the pipeline's scheduler: LCM (`lcm.py`) and DDIM (`ddim.py`).

A policy samples trajectories (rollouts) and binds recorded ones to the function PPO recomputes log π with
(`transitions(pipe, trajectory).gaussian(unet, rows, k)` -> mean, std of the action of step k).
"""

from __future__ import annotations

from typing import Protocol

import torch

from rollout.policies.ddim import DDIMPolicy
from rollout.policies.lcm import LCMPolicy
from rollout.samplers import DDIM, LCM
from rollout.trajectory import Trajectory


class Transitions(Protocol):
    latents: torch.Tensor

    def gaussian(
        self, unet: torch.nn.Module, rows: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


POLICIES = {LCM: LCMPolicy, DDIM: DDIMPolicy}


def policy_for(pipe) -> type[LCMPolicy] | type[DDIMPolicy]:
    """The policy of `pipe`, by its scheduler; a clear error for a scheduler without one."""
    for candidate in POLICIES.values():
        if isinstance(pipe.scheduler, candidate.scheduler):
            return candidate
    supported = ", ".join(p.scheduler.__name__ for p in POLICIES.values())
    raise ValueError(
        f"no policy for a pipeline with {type(pipe.scheduler).__name__}; supported schedulers: {supported}"
    )


def sample_trajectory(
    pipe, prompts: list[str], num_steps: int, guidance_scale: float, generator: torch.Generator | None = None, **options
) -> Trajectory:
    """Sample a batch with the policy of `pipe` (LCM or DDIM, by `policy_for`); `options` as that policy's sampler
    takes them."""
    return policy_for(pipe).sample(pipe, prompts, num_steps, guidance_scale, generator, **options)
