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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from diffusers import LatentConsistencyModelPipeline, LCMScheduler

from rollout.precision import math_dtype_for


@dataclass
class Trajectory:
    """One batch of B sampled chains; field names are a contract (see DESIGN.md)."""

    prompts: list[str]
    prompt_embeds: torch.Tensor  # [B, L, D]
    timesteps: torch.Tensor  # int [H]
    latents: torch.Tensor  # fp32 [B, H, C, h, w]: x_0 … x_{H-1}
    log_probs: torch.Tensor  # fp32 [B, H-1]: log π(x_{k+1} | x_k) at sampling time
    images: torch.Tensor  # uint8 [B, 3, height, width]
    guidance_scale: float
    policy_version: int
    negative_prompt_embeds: torch.Tensor | None = (
        None  # [B, L, D]: the DDIM policy's unconditional embeds (None for LCM)
    )
    eta: float | None = None  # the DDIM policy's η (None for LCM)

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> Trajectory:
        return replace(
            self,
            prompt_embeds=self.prompt_embeds.to(device),
            timesteps=self.timesteps.to(device),
            latents=self.latents.to(device),
            log_probs=self.log_probs.to(device),
            images=self.images.to(device),
            negative_prompt_embeds=None
            if self.negative_prompt_embeds is None
            else self.negative_prompt_embeds.to(device),
        )

    def select(self, index: list[int]) -> Trajectory:
        """The samples at `index`, in that order."""
        rows = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            prompts=[self.prompts[i] for i in index],
            prompt_embeds=self.prompt_embeds[rows],
            latents=self.latents[rows],
            log_probs=self.log_probs[rows],
            images=self.images[rows],
            negative_prompt_embeds=None if self.negative_prompt_embeds is None else self.negative_prompt_embeds[rows],
        )

    @staticmethod
    def concat(trajectories: list[Trajectory]) -> Trajectory:
        """Join batches sampled with the same timesteps, guidance and η into one."""
        first = trajectories[0]
        for other in trajectories[1:]:
            if not torch.equal(other.timesteps, first.timesteps) or (other.guidance_scale, other.eta) != (
                first.guidance_scale,
                first.eta,
            ):
                raise ValueError("cannot concatenate trajectories with different timesteps, guidance scales or η")
        return Trajectory(
            prompts=[p for t in trajectories for p in t.prompts],
            prompt_embeds=torch.cat([t.prompt_embeds for t in trajectories]),
            timesteps=first.timesteps,
            latents=torch.cat([t.latents for t in trajectories]),
            log_probs=torch.cat([t.log_probs for t in trajectories]),
            images=torch.cat([t.images for t in trajectories]),
            guidance_scale=first.guidance_scale,
            policy_version=min(t.policy_version for t in trajectories),
            negative_prompt_embeds=None
            if first.negative_prompt_embeds is None
            else torch.cat([t.negative_prompt_embeds for t in trajectories]),
            eta=first.eta,
        )


def lcm_timesteps(scheduler: LCMScheduler, num_steps: int, original_inference_steps: int = 50) -> torch.Tensor:
    """τ_0 > … > τ_{H-1} as the LCMScheduler chooses them (H=8, 50 original steps: 999, 879, …, 139)."""
    scheduler.set_timesteps(num_steps, original_inference_steps=original_inference_steps)
    return scheduler.timesteps.clone().long()


def guidance_embedding(pipe: LatentConsistencyModelPipeline, guidance_scale: float, batch_size: int) -> torch.Tensor:
    """The LCM `timestep_cond`: a sinusoidal embedding of w = guidance_scale − 1, fp32 [B, D]."""
    w = torch.full((batch_size,), guidance_scale - 1.0)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)


def clip_or_threshold(x0: torch.Tensor, config) -> torch.Tensor:
    """x̂0 clipped as LCMScheduler.step clips it, per sample: dynamic thresholding (Imagen) if
    `config.thresholding`, else clamping to ±clip_sample_range if `config.clip_sample`, else unchanged."""
    if config.thresholding:
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), config.dynamic_thresholding_ratio, dim=1)  # percentile of |x̂0|
        s = s.clamp(min=1, max=config.sample_max_value).unsqueeze(1)
        return (flat.clamp(-s, s) / s).reshape(x0.shape)
    if config.clip_sample:
        return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0


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


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²·I) averaged over all but the batch dim, in fp32."""
    dtype = math_dtype_for(x.dtype, mean.dtype)
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x.ndim)))


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


def decode_images(pipe: LatentConsistencyModelPipeline, denoised: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] images from the final denoised latents, as `pipe(...)` post-processes them."""
    image = pipe.vae.decode(denoised.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


def encode_prompts(pipe: LatentConsistencyModelPipeline, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states [B, L, D] for the prompts (no negative prompt: LCMs take none)."""
    prompt_embeds, _ = pipe.encode_prompt(prompts, pipe.unet.device, 1, do_classifier_free_guidance=False)
    return prompt_embeds


def draw_noise(
    generator: torch.Generator | None, shape: tuple[int, ...], num_steps: int, device, noise_group_size: int = 1
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The chain's noise, in the one order every sampler draws it: x_0 [B, C, h, w], then ε_0 … ε_{H−2}.

    With `noise_group_size` G > 1, x_0 is drawn for B/G samples and shared by each run of G consecutive ones
    (GRPO's same-initial-noise groups); the ε stay per sample.
    """
    batch = shape[0]
    if batch % noise_group_size:
        raise ValueError(f"noise_group_size {noise_group_size} does not divide the batch of {batch}")
    x0 = torch.randn((batch // noise_group_size, *shape[1:]), generator=generator, device=device, dtype=torch.float32)
    x0 = x0.repeat_interleave(noise_group_size, dim=0) if noise_group_size > 1 else x0
    return x0, [
        torch.randn(shape, generator=generator, device=device, dtype=torch.float32) for _ in range(num_steps - 1)
    ]


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


def latent_shape(
    pipe: LatentConsistencyModelPipeline, batch: int, height: int | None, width: int | None
) -> tuple[int, int, int, int]:
    """[B, C, h, w] of the latents for images of height × width (default: the UNet's sample size)."""
    scale = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * scale
    width = width or pipe.unet.config.sample_size * scale
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of {scale}, got {height}x{width}")
    return (batch, pipe.unet.config.in_channels, height // scale, width // scale)


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


def sample_trajectory(
    pipe, prompts: list[str], num_steps: int, guidance_scale: float, generator: torch.Generator | None = None, **options
) -> Trajectory:
    """Sample a batch with the policy of `pipe` (LCM or DDIM, see `rollout.policies`); `options` as that policy's sampler takes them."""
    from rollout.policies import policy_for

    return policy_for(pipe).sample(pipe, prompts, num_steps, guidance_scale, generator, **options)


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
    )
