"""Math every sampler policy shares: the initial noise and per-step noise, x̂0 clipping, the Gaussian log-density,
prompt encoding, the latent shape and the decode to uint8 images."""

from __future__ import annotations

import math

import torch
from diffusers import LatentConsistencyModelPipeline

from rollout.precision import math_dtype_for


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


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²·I) averaged over all but the batch dim, in fp32."""
    dtype = math_dtype_for(x.dtype, mean.dtype)
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x.ndim)))


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
