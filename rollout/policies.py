"""The sampler policies, chosen by the pipeline's scheduler: LCM (`rollout.policy`) and DDIM (`rollout.ddim_policy`).

A policy samples trajectories (rollouts) and binds recorded ones to the function PPO recomputes log π with
(`transitions(pipe, trajectory).gaussian(unet, rows, k)` -> mean, std of the action of step k).
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import DDIMScheduler, LCMScheduler

from rollout import ddim_policy, policy
from rollout.policy import Trajectory
from rollout.samplers import DDIM, LCM


class Transitions(Protocol):
    latents: torch.Tensor

    def gaussian(
        self, unet: torch.nn.Module, rows: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class LCMPolicy:
    """RLCM's policy: H−1 actions, the last step deterministic, guidance by the LCM embedding (one UNet image per step)."""

    name, scheduler = LCM, LCMScheduler

    @staticmethod
    def sample(
        pipe,
        prompts,
        num_steps,
        guidance_scale,
        generator=None,
        *,
        height=None,
        width=None,
        policy_version=0,
        noise_group_size=1,
        original_inference_steps=50,
        eta=None,
    ) -> Trajectory:
        """`eta` belongs to DDIM and is not used."""
        return policy.sample_lcm_trajectory(
            pipe,
            prompts,
            num_steps,
            guidance_scale,
            generator,
            height,
            width,
            policy_version,
            original_inference_steps,
            noise_group_size,
        )

    @staticmethod
    def transitions(pipe, trajectory: Trajectory) -> policy.LCMTransitions:
        device = trajectory.latents.device
        return policy.LCMTransitions(
            pipe.scheduler,
            trajectory.timesteps.to(device),
            trajectory.latents,
            trajectory.prompt_embeds,
            policy.guidance_embedding(pipe, trajectory.guidance_scale, len(trajectory)).to(device),
        )

    @staticmethod
    def unet_images_per_step(guidance_scale: float) -> int:
        return 1

    @staticmethod
    def num_actions(num_steps: int) -> int:
        return num_steps - 1


class DDIMPolicy:
    """DDPO's policy: H actions, classifier-free guidance (two UNet images per step when w > 1)."""

    name, scheduler = DDIM, DDIMScheduler

    @staticmethod
    def sample(
        pipe,
        prompts,
        num_steps,
        guidance_scale,
        generator=None,
        *,
        height=None,
        width=None,
        policy_version=0,
        noise_group_size=1,
        original_inference_steps=None,
        eta=1.0,
    ) -> Trajectory:
        """`original_inference_steps` belongs to LCM and is not used."""
        return ddim_policy.sample_ddim_trajectory(
            pipe,
            prompts,
            num_steps,
            guidance_scale,
            generator,
            height,
            width,
            policy_version,
            noise_group_size,
            1.0 if eta is None else eta,
        )

    @staticmethod
    def transitions(pipe, trajectory: Trajectory) -> ddim_policy.DDIMTransitions:
        return ddim_policy.DDIMTransitions(
            pipe.scheduler,
            trajectory.timesteps.to(trajectory.latents.device),
            trajectory.latents,
            trajectory.prompt_embeds,
            trajectory.negative_prompt_embeds,
            trajectory.guidance_scale,
            trajectory.eta,
        )

    @staticmethod
    def unet_images_per_step(guidance_scale: float) -> int:
        return 2 if guidance_scale > 1 else 1

    @staticmethod
    def num_actions(num_steps: int) -> int:
        return num_steps


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
