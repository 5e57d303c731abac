"""The LCM sampler as a policy (RLCM): states x_k, Gaussian actions x_{k+1}, exact log-probabilities.

With H inference steps and LCMScheduler timesteps τ_0 > … > τ_{H-1}:

    x̂0_k       = the clean-sample prediction of the UNet at (x_k, τ_k)       (per prediction type)
    x̂0_k       ← clamp(x̂0_k, −s, s)/s, s = clamp(quantile_ρ(|x̂0_k|), 1, sample_max_value)
                                     per sample, ρ = dynamic_thresholding_ratio  (if config.thresholding)
                 or clamp(x̂0_k, −r, r), r = clip_sample_range                  (elif config.clip_sample)
    denoised_k = c_out(τ_k)·x̂0_k + c_skip(τ_k)·x_k                         (boundary condition)
    π(x_{k+1} | x_k) = N(√ᾱ(τ_{k+1})·denoised_k, (1 − ᾱ(τ_{k+1}))·I)      for k < H−1
    output     = denoised_{H−1}                                            (deterministic, no log-prob)

log π is the Gaussian log-density averaged over latent dims (C·h·w), in fp32. One UNet call per
step, conditioned on the LCM guidance embedding of w = guidance_scale − 1 (no CFG doubling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler

from rollout.policies.chain_math import (
    clip_or_threshold,
    decode_images,
    draw_noise,
    encode_prompts,
    gaussian_log_prob,
    latent_shape,
)
from rollout.precision import math_dtype_for
from rollout.samplers import LCM
from rollout.trajectory import Trajectory


def lcm_timesteps(scheduler: LCMScheduler, num_steps: int, original_inference_steps: int = 50) -> torch.Tensor:
    """τ_0 > … > τ_{H-1} as the LCMScheduler chooses them (H=8, 50 original steps: 999, 879, …, 139)."""
    scheduler.set_timesteps(num_steps, original_inference_steps=original_inference_steps)
    return scheduler.timesteps.clone().long()


def guidance_embedding(pipe: LatentConsistencyModelPipeline, guidance_scale: float, batch_size: int) -> torch.Tensor:
    """The LCM `timestep_cond`: a sinusoidal embedding of w = guidance_scale − 1, fp32 [B, D]."""
    w = torch.full((batch_size,), guidance_scale - 1.0)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)


def predict_denoised(
    unet: torch.nn.Module,
    scheduler: LCMScheduler,
    x: torch.Tensor,
    t: torch.Tensor,
    prompt_embeds: torch.Tensor,
    w_embedding: torch.Tensor,
) -> torch.Tensor:
    """denoised_k = c_out(τ)·x̂0 + c_skip(τ)·x_k (x̂0 clipped per the scheduler config), in fp32, for fp32 x [B, C, h, w]
    and timesteps t [B]."""
    dtype = unet.dtype
    math_dtype = math_dtype_for(dtype, x.dtype)
    model_output = unet(
        x.to(dtype),
        t,
        encoder_hidden_states=prompt_embeds.to(dtype),
        timestep_cond=w_embedding.to(dtype),
        return_dict=False,
    )[0].to(math_dtype)
    alpha_prod_t = scheduler.alphas_cumprod.to(x.device, math_dtype)[t].view(-1, 1, 1, 1)  # ᾱ(τ)
    x = x.to(math_dtype)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        x0_pred = (x - (1 - alpha_prod_t).sqrt() * model_output) / alpha_prod_t.sqrt()
    elif prediction_type == "sample":
        x0_pred = model_output
    elif prediction_type == "v_prediction":
        x0_pred = alpha_prod_t.sqrt() * x - (1 - alpha_prod_t).sqrt() * model_output
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    x0_pred = clip_or_threshold(x0_pred, scheduler.config)
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
    return c_out.view(-1, 1, 1, 1).to(math_dtype) * x0_pred + c_skip.view(-1, 1, 1, 1).to(math_dtype) * x


def transition_mean_std(
    scheduler: LCMScheduler, denoised: torch.Tensor, t_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean √ᾱ(τ_{k+1})·denoised_k and std √(1 − ᾱ(τ_{k+1})) of the action x_{k+1}."""
    alpha_prod_next = scheduler.alphas_cumprod.to(denoised.device, math_dtype_for(denoised.dtype))[t_next].view(
        -1, 1, 1, 1
    )
    return alpha_prod_next.sqrt() * denoised, (1 - alpha_prod_next).sqrt()


def transition_gaussian(
    unet: torch.nn.Module,
    scheduler: LCMScheduler,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    prompt_embeds: torch.Tensor,
    w_embedding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of π_θ(x_{k+1} | x_k) for a batch whose samples may sit at different steps k (t, t_next: [B])."""
    denoised = predict_denoised(unet, scheduler, x, t, prompt_embeds, w_embedding)
    return transition_mean_std(scheduler, denoised, t_next)


def transition_log_prob(
    unet: torch.nn.Module,
    scheduler: LCMScheduler,
    x: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    x_next: torch.Tensor,
    prompt_embeds: torch.Tensor,
    w_embedding: torch.Tensor,
) -> torch.Tensor:
    """log π_θ(x_{k+1} | x_k) for a batch whose samples may sit at different steps k (t, t_next: [B])."""
    mean, std = transition_gaussian(unet, scheduler, x, t, t_next, prompt_embeds, w_embedding)
    return gaussian_log_prob(x_next, mean, std)


@dataclass
class Step:
    """One step k of the chain: its input x_k, the denoised prediction and (k < H−1) the action's Gaussian."""

    k: int
    x: torch.Tensor  # x_k, the input of the UNet call
    t: torch.Tensor  # τ_k per sample [B]
    denoised: torch.Tensor  # denoised_k
    mean: torch.Tensor | None = None  # √ᾱ(τ_{k+1})·denoised_k; None at the last step
    std: torch.Tensor | None = None  # √(1 − ᾱ(τ_{k+1}))
    x_next: torch.Tensor | None = None  # x_{k+1} = mean + std·ε_k


Denoise = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def lcm_chain(
    scheduler: LCMScheduler,
    timesteps: torch.Tensor,
    x0: torch.Tensor,
    noise: list[torch.Tensor],
    denoise: Denoise,
    prepare: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Step]:
    """The LCM sampling chain, written once: rollouts (no grad) and first-order objectives (with grad) walk it.

    `denoise(k, x_k, t)` returns denoised_k (the caller decides LoRA, grad and checkpointing);
    `prepare(k, x_k)` may replace the state before its UNet call (e.g. detach it for truncated backprop).
    """
    num_steps, batch = len(timesteps), x0.shape[0]
    x = x0
    for k in range(num_steps):
        if prepare is not None:
            x = prepare(k, x)
        t = timesteps[k].expand(batch)
        denoised = denoise(k, x, t)
        if k == num_steps - 1:
            yield Step(k, x, t, denoised)
            return
        mean, std = transition_mean_std(scheduler, denoised, timesteps[k + 1].expand(batch))
        x_next = mean + std * noise[k]
        yield Step(k, x, t, denoised, mean, std, x_next)
        x = x_next


@dataclass
class LCMTransitions:
    """Recorded LCM chains and how π_θ scores their actions (PPO's recomputation)."""

    scheduler: LCMScheduler
    timesteps: torch.Tensor  # [H]
    latents: torch.Tensor  # [B, H, C, h, w]
    prompt_embeds: torch.Tensor
    w_embedding: torch.Tensor  # [B, E]

    def gaussian(self, unet: torch.nn.Module, rows: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the action of step k[i] of chain rows[i]."""
        return transition_gaussian(
            unet,
            self.scheduler,
            self.latents[rows, k],
            self.timesteps[k],
            self.timesteps[k + 1],
            self.prompt_embeds[rows],
            self.w_embedding[rows],
        )


@torch.no_grad()
def sample_lcm_trajectory(
    pipe: LatentConsistencyModelPipeline,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    policy_version: int = 0,
    original_inference_steps: int = 50,
    noise_group_size: int = 1,
) -> Trajectory:
    """Sample B = len(prompts) chains of H = num_steps LCM steps, recording states and log π."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    device = pipe.unet.device
    batch = len(prompts)
    shape = latent_shape(pipe, batch, height, width)
    timesteps = lcm_timesteps(pipe.scheduler, num_steps, original_inference_steps).to(device)
    prompt_embeds = encode_prompts(pipe, prompts)
    w_embedding = guidance_embedding(pipe, guidance_scale, batch).to(device)
    x0, noise = draw_noise(generator, shape, num_steps, device, noise_group_size)

    def denoise(k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return predict_denoised(pipe.unet, pipe.scheduler, x, t, prompt_embeds, w_embedding)

    states, log_probs = [], []
    for step in lcm_chain(pipe.scheduler, timesteps, x0 * pipe.scheduler.init_noise_sigma, noise, denoise):
        states.append(step.x)
        if step.x_next is not None:
            log_probs.append(gaussian_log_prob(step.x_next, step.mean, step.std))

    return Trajectory(
        prompts=list(prompts),
        prompt_embeds=prompt_embeds,
        timesteps=timesteps.cpu(),
        latents=torch.stack(states, dim=1),
        log_probs=torch.stack(log_probs, dim=1) if log_probs else torch.zeros(batch, 0),
        images=decode_images(pipe, step.denoised),
        guidance_scale=float(guidance_scale),
        policy_version=policy_version,
        final_latents=step.denoised,
    )


class LCMPolicy:
    """RLCM's policy: H−1 actions, the last step deterministic, guidance by the LCM embedding (1 UNet image a step)."""

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
        return sample_lcm_trajectory(
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
    def transitions(pipe, trajectory: Trajectory) -> LCMTransitions:
        device = trajectory.latents.device
        return LCMTransitions(
            pipe.scheduler,
            trajectory.timesteps.to(device),
            trajectory.latents,
            trajectory.prompt_embeds,
            guidance_embedding(pipe, trajectory.guidance_scale, len(trajectory)).to(device),
        )

    @staticmethod
    def unet_images_per_step(guidance_scale: float) -> int:
        return 1

    @staticmethod
    def num_actions(num_steps: int) -> int:
        return num_steps - 1
