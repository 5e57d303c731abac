"""The DDIM sampler of a Stable Diffusion pipeline as a policy (DDPO, Black et al. 2023): every step is an action.

With H inference steps, DDIMScheduler timesteps t_0 > … > t_{H-1}, T training timesteps and η:

    t'          = t_k − T/H                                       (previous timestep; ᾱ(t') = final ᾱ if t' < 0)
    ε̂          = ε_u + w·(ε_c − ε_u)     one UNet call on [x_k, x_k] with [negative, positive] embeds (w > 1)
    x̂0         = (x_k − √(1−ᾱ_t)·ε̂)/√ᾱ_t                          (epsilon prediction; sample / v alike)
    x̂0         ← clipped or thresholded per the scheduler config
    σ_t         = η·√((1−ᾱ_t')/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_t'))
    π(x_{k+1} | x_k) = N(√ᾱ_t'·x̂0 + √(1−ᾱ_t'−σ_t²)·ε̂, σ_t²·I)     for every k < H; x_H is decoded

exactly as `diffusers.DDIMScheduler.step` computes it. log π is the Gaussian log-density averaged over latent
dims (C·h·w), in fp32. The noise is drawn as the stock pipeline draws it: x_0, then ε_0 … ε_{H−1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from rollout.policies.chain_math import clip_or_threshold, decode_images, draw_noise, gaussian_log_prob, latent_shape
from rollout.precision import math_dtype_for
from rollout.samplers import DDIM
from rollout.trajectory import Trajectory


def ddim_timesteps(scheduler: DDIMScheduler, num_steps: int) -> torch.Tensor:
    """t_0 > … > t_{H-1} as the DDIMScheduler chooses them (SD1.5, H=50: 981, 961, …, 1)."""
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.clone().long()


def previous_timestep(scheduler: DDIMScheduler, t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """t' = t − T/H (integer division, as DDIMScheduler.step); negative at the last step."""
    return t - scheduler.config.num_train_timesteps // num_steps


def alpha_prod(scheduler: DDIMScheduler, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ᾱ(t) per sample [B, 1, 1, 1]; the scheduler's final ᾱ where t < 0."""
    alphas = scheduler.alphas_cumprod.to(t.device, dtype)
    final = scheduler.final_alpha_cumprod.to(t.device, dtype)
    return torch.where(t >= 0, alphas[t.clamp(min=0)], final).view(-1, 1, 1, 1)


def guided_epsilon(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """ε̂ = ε_u + w·(ε_c − ε_u) from one UNet call on the doubled batch (diffusers' order: negative first);
    a single conditional call when w ≤ 1 (no guidance, as the pipeline decides)."""
    dtype = unet.dtype
    if guidance_scale > 1:
        out = unet(
            torch.cat([x, x]).to(dtype),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds]).to(dtype),
            return_dict=False,
        )[0]
        eps_uncond, eps_text = out.to(math_dtype_for(dtype, x.dtype)).chunk(2)
        return eps_uncond + guidance_scale * (eps_text - eps_uncond)
    out = unet(x.to(dtype), t, encoder_hidden_states=prompt_embeds.to(dtype), return_dict=False)[0]
    return out.to(math_dtype_for(dtype, x.dtype))


def ddim_prediction(
    scheduler: DDIMScheduler, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂0 (clipped or thresholded per the scheduler config) and ε̂ of x_k at timesteps t [B], per prediction type."""
    x0_pred, eps_pred = unclipped_prediction(scheduler, model_output, x, t)
    return clip_or_threshold(x0_pred, scheduler.config), eps_pred


def unclipped_prediction(
    scheduler: DDIMScheduler, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂0 and ε̂ of x_t at timesteps t [B] from the model's output, per the scheduler's prediction type (no clip)."""
    dtype = math_dtype_for(model_output.dtype, x.dtype)
    x = x.to(dtype)
    alpha_t = alpha_prod(scheduler, t, dtype)  # ᾱ_t
    beta_t = 1 - alpha_t
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        x0_pred, eps_pred = (x - beta_t ** (0.5) * model_output) / alpha_t ** (0.5), model_output
    elif prediction_type == "sample":
        x0_pred = model_output
        eps_pred = (x - alpha_t ** (0.5) * x0_pred) / beta_t ** (0.5)
    elif prediction_type == "v_prediction":
        x0_pred = (alpha_t**0.5) * x - (beta_t**0.5) * model_output
        eps_pred = (alpha_t**0.5) * model_output + (beta_t**0.5) * x
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return x0_pred, eps_pred


def ddim_step_mean_std(
    scheduler: DDIMScheduler,
    x0_pred: torch.Tensor,
    eps_pred: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean √ᾱ_t'·x̂0 + √(1−ᾱ_t'−σ_t²)·ε̂ and std σ_t of x_{k+1}, from x̂0 and ε̂ of x_k."""
    alpha_t, alpha_prev = alpha_prod(scheduler, t, x0_pred.dtype), alpha_prod(scheduler, t_prev, x0_pred.dtype)
    variance = ((1 - alpha_prev) / (1 - alpha_t)) * (1 - alpha_t / alpha_prev)
    std = eta * variance ** (0.5)  # σ_t
    mean = alpha_prev ** (0.5) * x0_pred + (1 - alpha_prev - std**2) ** (0.5) * eps_pred
    return mean, std


def ddim_mean_std(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std σ_t of x_{k+1} given x_k, t [B], t' [B], as DDIMScheduler.step (use_clipped_model_output=False)."""
    x0_pred, eps_pred = ddim_prediction(scheduler, model_output, x, t)
    return ddim_step_mean_std(scheduler, x0_pred, eps_pred, t, t_prev, eta)


def ddim_transition_gaussian(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    x: torch.Tensor,
    t: torch.Tensor,
    num_steps: int,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    guidance_scale: float,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of π_θ(x_{k+1} | x_k) for samples that may sit at different steps (t: [B])."""
    eps = guided_epsilon(unet, x, t, prompt_embeds, negative_prompt_embeds, guidance_scale)
    return ddim_mean_std(scheduler, eps, x, t, previous_timestep(scheduler, t, num_steps), eta)


@dataclass
class DDIMTransitions:
    """Recorded DDIM chains and how π_θ scores their actions (PPO's recomputation)."""

    scheduler: DDIMScheduler
    timesteps: torch.Tensor  # [H]
    latents: torch.Tensor  # [B, H+1, C, h, w]
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    guidance_scale: float
    eta: float

    def gaussian(self, unet: torch.nn.Module, rows: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the action of step k[i] of chain rows[i]."""
        return ddim_transition_gaussian(
            unet,
            self.scheduler,
            self.latents[rows, k],
            self.timesteps[k],
            len(self.timesteps),
            self.prompt_embeds[rows],
            self.negative_prompt_embeds[rows],
            self.guidance_scale,
            self.eta,
        )


def encode_prompts_with_negative(
    pipe: StableDiffusionPipeline, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative ("" as the pipeline uses without a negative prompt) text embeddings [B, L, D]."""
    return pipe.encode_prompt(prompts, pipe.unet.device, 1, do_classifier_free_guidance=True)


@torch.no_grad()
def sample_ddim_trajectory(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
    policy_version: int = 0,
    noise_group_size: int = 1,
    eta: float = 1.0,
) -> Trajectory:
    """Sample B = len(prompts) DDIM chains of H steps with CFG: latents [B, H+1, …] (x_H decoded), log π [B, H]."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic DDIM policy (η = 0 has no log-probability), got {eta}")
    device = pipe.unet.device
    shape = latent_shape(pipe, len(prompts), height, width)
    timesteps = ddim_timesteps(pipe.scheduler, num_steps).to(device)
    prompt_embeds, negative_embeds = encode_prompts_with_negative(pipe, prompts)
    x, noise = draw_noise(generator, shape, num_steps + 1, device, noise_group_size)
    x = x * pipe.scheduler.init_noise_sigma
    states, log_probs = [x], []
    for k in range(num_steps):
        t = timesteps[k].expand(len(prompts))
        mean, std = ddim_transition_gaussian(
            pipe.unet, pipe.scheduler, x, t, num_steps, prompt_embeds, negative_embeds, guidance_scale, eta
        )
        x = mean + std * noise[k]
        log_probs.append(gaussian_log_prob(x, mean, std))
        states.append(x)
    return Trajectory(
        prompts=list(prompts),
        prompt_embeds=prompt_embeds,
        timesteps=timesteps.cpu(),
        latents=torch.stack(states, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        images=decode_images(pipe, x),
        guidance_scale=float(guidance_scale),
        policy_version=policy_version,
        negative_prompt_embeds=negative_embeds,
        eta=float(eta),
        final_latents=x,
    )


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
        return sample_ddim_trajectory(
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
    def transitions(pipe, trajectory: Trajectory) -> DDIMTransitions:
        return DDIMTransitions(
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
