"""The chain the first-order learners differentiate: B reparameterized LCM chains with grad, decoded and scored.

With the RLCM policy (`rollout.policies.lcm`), reparameterized, and the frozen base model (LoRA disabled) as reference:

    x_0        = initial noise
    denoised_k = f_θ(x_k, τ_k)                                     (c_out·x̂0 + c_skip·x_k, LoRA on)
    mean_θ,k   = √ᾱ(τ_{k+1})·denoised_k,   σ_k = √(1 − ᾱ(τ_{k+1}))
    mean_ref,k = √ᾱ(τ_{k+1})·f_ref(x_k, τ_k)                         (LoRA off, same state x_k)
    x_{k+1}    = mean_θ,k + σ_k·ε_k                                 for k < H−1
    reward     = r(decode(denoised_{H−1}), prompt),   divergence = Σ_{k<H−1} D(N(mean_θ,k, σ_k²) ‖ N(mean_ref,k, σ_k²))

The gradient is the full derivative: through every state x_k (so also through mean_ref,k), the decode and the
reward, unless truncated to the last K transitions. What is ascended is the algorithm's (ROCM: reward − λ·divergence).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import LatentConsistencyModelPipeline
from torch.utils.checkpoint import checkpoint

from learner.divergence_kinds import DIVERGENCES
from learner.divergences import gaussian_divergence
from rollout.policies.chain_math import draw_noise, encode_prompts, latent_shape
from rollout.policies.lcm import guidance_embedding, lcm_chain, lcm_timesteps, predict_denoised, transition_mean_std
from rollout.precision import math_dtype_for

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


def _denoise(unet, scheduler, x, t, prompt_embeds, w_embedding, use_adapter: bool) -> torch.Tensor:
    """denoised_k with the LoRA on (policy) or off (frozen base).

    The adapter state is set here, inside what gets checkpointed, so the backward recomputation of a
    reference call also runs with the LoRA off; adapters are always on again when this returns.
    """
    if use_adapter:
        return predict_denoised(unet, scheduler, x, t, prompt_embeds, w_embedding)
    unet.disable_adapters()
    try:
        return predict_denoised(unet, scheduler, x, t, prompt_embeds, w_embedding)
    finally:
        unet.enable_adapters()


def decode_images_01(pipe: LatentConsistencyModelPipeline, denoised: torch.Tensor) -> torch.Tensor:
    """Differentiable `decode_images`: float [B, 3, H, W] images in [0, 1] from the final denoised latents."""
    image = pipe.vae.decode(denoised.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (image.to(math_dtype_for(image.dtype)) / 2 + 0.5).clamp(0, 1)


def _call(use_checkpoint: bool, fn: Callable, *args):
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def sample_chain(
    pipe: LatentConsistencyModelPipeline,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    reward_fn: RewardFn,
    divergence: str = "none",
    *,
    height: int | None = None,
    width: int | None = None,
    truncate_steps: int | None = None,
    js_samples: int = 1,
    gradient_checkpointing: bool = True,
    original_inference_steps: int = 50,
    latents: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sample B = len(prompts) reparameterized chains with grad; `reward`, `divergence` [B], `images` uint8.

    The chain is `rollout.policies.lcm.lcm_chain` and its noise x_0, ε_0 … ε_{H−2} comes from `draw_noise` first,
    as for `sample_trajectory` (same seed, same weights: same chain); `latents` replaces x_0 (the draw still happens).
    `divergence` is Σ_k D_k; with divergence "none" the reference UNet is not run and it is zero.

    truncate_steps = K: the states x_1 … x_{H−1−K} are detached, so the reward gradient flows through the
    last K transitions, the final denoising call and the decode only; each D_k still depends on θ through
    mean_θ,k at its (detached) state. Without a divergence the calls before x_{H−1−K} run without grad.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if truncate_steps is not None and truncate_steps < 1:
        raise ValueError(f"truncate_steps must be >= 1 or None (full gradient), got {truncate_steps}")
    unet, scheduler = pipe.unet, pipe.scheduler
    device, batch = unet.device, len(prompts)
    shape = latent_shape(pipe, batch, height, width)
    timesteps = lcm_timesteps(scheduler, num_steps, original_inference_steps).to(device)
    with torch.no_grad():
        prompt_embeds = encode_prompts(pipe, prompts)
    w_embedding = guidance_embedding(pipe, guidance_scale, batch).to(device)
    x0, noise = draw_noise(generator, shape, num_steps, device)  # before any divergence draws from `generator`
    x0 = x0 * scheduler.init_noise_sigma if latents is None else latents
    regularize = divergence != "none"
    last_detached = num_steps - 1 - truncate_steps if truncate_steps is not None else 0  # x_j, j ≤ this, detached
    grad = torch.is_grad_enabled()

    def with_grad(k: int) -> bool:
        return grad and (regularize or k >= last_detached)

    def prepare(k: int, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if truncate_steps is not None and 1 <= k <= last_detached else x

    def denoise(k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(with_grad(k)):
            return _call(gradient_checkpointing, _denoise, unet, scheduler, x, t, prompt_embeds, w_embedding, True)

    total_divergence = torch.zeros(batch, device=device)
    for step in lcm_chain(scheduler, timesteps, x0, noise, denoise, prepare):
        denoised = step.denoised
        if step.mean is None or not regularize:
            continue
        with torch.set_grad_enabled(with_grad(step.k)):
            denoised_ref = _call(
                gradient_checkpointing, _denoise, unet, scheduler, step.x, step.t, prompt_embeds, w_embedding, False
            )
            mean_ref = transition_mean_std(scheduler, denoised_ref, timesteps[step.k + 1].expand(batch))[
                0
            ]  # mean_ref,k
            total_divergence = total_divergence + gaussian_divergence(
                divergence, step.mean, mean_ref, step.std, generator, js_samples
            )

    images = _call(gradient_checkpointing, decode_images_01, pipe, denoised)
    reward = reward_fn(images, list(prompts)).to(math_dtype_for(images.dtype))
    return {
        "reward": reward,
        "divergence": total_divergence,
        "images": (images.detach() * 255).round().to(torch.uint8),
    }
