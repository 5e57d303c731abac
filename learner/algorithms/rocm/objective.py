"""ROCM's objective (Algorithm 2): first-order reward ascent through the LCM chain, regularized per step.

On the chain of `learner.first_order.chain` (x_k, mean_θ,k, mean_ref,k, σ_k as written there):

    objective = r(decode(denoised_{H−1}), prompt) − λ·Σ_{k<H−1} D(N(mean_θ,k, σ_k²) ‖ N(mean_ref,k, σ_k²))

λ = `rocm.lam` (or, with lam: auto, this epoch's λ from `lam_controller`), D = `rocm.divergence`.
DRaFT and AlignProp ascend the same objective with their own truncation (their λ defaults to 0).
"""

from __future__ import annotations

import functools

import torch
from diffusers import LatentConsistencyModelPipeline

from learner.algorithms.rocm.settings import ROCMSettings
from learner.divergence_kinds import DIVERGENCES
from learner.first_order.chain import RewardFn, sample_chain
from learner.first_order.update import first_order_update


def rocm_objective(
    pipe: LatentConsistencyModelPipeline,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    reward_fn: RewardFn,
    divergence: str,
    lam: float,
    *,
    height: int | None = None,
    width: int | None = None,
    truncate_steps: int | None = None,
    js_samples: int = 1,
    gradient_checkpointing: bool = True,
    original_inference_steps: int = 50,
    latents: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`objective` = reward − λ·divergence, `reward`, `divergence` [B] and `images` uint8 of B = len(prompts) chains
    sampled with grad (`sample_chain`: the noise, truncation K and `latents`); λ == 0 runs no reference UNet."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if isinstance(lam, str) or lam < 0:
        raise ValueError(
            f"lam must be a number >= 0, got {lam!r} (rocm.lam: auto is resolved per epoch by the driver's λ "
            "controller)"
        )
    out = sample_chain(
        pipe,
        prompts,
        num_steps,
        guidance_scale,
        generator,
        reward_fn,
        divergence if lam > 0 else "none",
        height=height,
        width=width,
        truncate_steps=truncate_steps,
        js_samples=js_samples,
        gradient_checkpointing=gradient_checkpointing,
        original_inference_steps=original_inference_steps,
        latents=latents,
    )
    return {"objective": out["reward"] - lam * out["divergence"], **out}


def rocm_call(
    pipe: LatentConsistencyModelPipeline,
    prompts: list[str],
    generator: torch.Generator | None,
    reward_fn: RewardFn,
    settings: ROCMSettings,
    truncate_steps: int | None,
    **chain,
) -> dict[str, torch.Tensor]:
    """ROCM's `Objective`: r − λ·Σ_k D_k with the settings' divergence, λ and memory knobs."""
    return rocm_objective(
        pipe,
        prompts,
        chain["num_steps"],
        chain["guidance_scale"],
        generator,
        reward_fn,
        settings.divergence,
        settings.lam,
        height=chain.get("height"),
        width=chain.get("width"),
        truncate_steps=truncate_steps,
        js_samples=settings.js_samples,
        gradient_checkpointing=settings.gradient_checkpointing,
        original_inference_steps=chain.get("original_inference_steps", 50),
    )


rocm_update = functools.partial(first_order_update, objective=rocm_call)
"""`first_order_update` ascending ROCM's objective (same arguments, less `objective`)."""
