"""The first-order update: ascend the algorithm's objective by backprop through the chain (ROCM, DRaFT, AlignProp).

    loss = −mean_i objective_i / grad_accum_steps        per objective call; AdamW steps every grad_accum_steps calls

The objective of one call is the algorithm's (`Objective`): ROCM's r − λ·Σ_k D_k on `learner.first_order.chain`;
DRaFT and AlignProp use it with their own truncation K (`truncation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from diffusers import LatentConsistencyModelPipeline

from learner.first_order.chain import RewardFn
from learner.guards import grad_norm_metrics
from learner.optim import optimizer_step


class Objective(Protocol):
    """An algorithm's first-order objective of one call: per chain [B] `objective` (ascended), `reward`,
    `divergence`; `images` uint8. `chain`: num_steps, guidance_scale, height, width, original_inference_steps."""

    def __call__(
        self,
        pipe: LatentConsistencyModelPipeline,
        prompts: list[str],
        generator: torch.Generator | None,
        reward_fn: RewardFn,
        settings,
        truncate_steps: int | None,
        **chain,
    ) -> dict[str, torch.Tensor]: ...


def first_order_update(
    pipe: LatentConsistencyModelPipeline,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    prompt_batches: list[list[str]],
    settings,
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator | None,
    reward_fn: RewardFn,
    objective: Objective,
    *,
    height: int | None = None,
    width: int | None = None,
    original_inference_steps: int = 50,
    reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None,
    record_samples: Callable[[list[str], torch.Tensor, torch.Tensor], None] | None = None,
    truncation: Callable[[], int | None] | None = None,
) -> dict[str, float]:
    """One AdamW step per `grad_accum_steps` objective calls (one per prompt batch); loss = −objective.mean()/accum.

    `reduce_gradients` averages gradients across data-parallel learners before clipping;
    `record_samples(prompts, rewards, images)` sees each call's detached samples (for logging);
    `truncation()` gives each call's truncate_steps (default: `settings.truncate_steps`; AlignProp draws it);
    `objective` is the algorithm's objective of one call (ROCM: `learner.algorithms.rocm.objective.rocm_call`).
    """
    accum = settings.grad_accum_steps
    if not prompt_batches or len(prompt_batches) % accum:
        raise ValueError(
            f"need a positive multiple of grad_accum_steps={accum} prompt batches, got {len(prompt_batches)}"
        )
    start = time.perf_counter()
    rewards, divergences, objectives, grad_norms, truncated = [], [], [], [], []
    optimizer.zero_grad(set_to_none=True)
    for index, prompts in enumerate(prompt_batches):
        truncate_steps = truncation() if truncation is not None else settings.truncate_steps
        truncated.append(num_steps - 1 if truncate_steps is None else min(truncate_steps, num_steps - 1))
        out = objective(
            pipe,
            prompts,
            generator,
            reward_fn,
            settings,
            truncate_steps,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            original_inference_steps=original_inference_steps,
        )
        (-out["objective"].mean() / accum).backward()
        rewards.append(out["reward"].detach().cpu())
        divergences.append(out["divergence"].detach().cpu())
        objectives.append(out["objective"].detach().cpu())
        if record_samples is not None:
            record_samples(list(prompts), rewards[-1], out["images"].cpu())
        if (index + 1) % accum == 0:
            grad_norms.append(optimizer_step(optimizer, params, settings.max_grad_norm, reduce_gradients))
    reward, divergence = torch.cat(rewards), torch.cat(divergences)
    return {
        "reward_mean": float(reward.mean()),
        "reward_std": float(reward.std(correction=0)),  # population std, as the RLCM rows
        "divergence_mean": float(divergence.mean()),
        f"divergence_{settings.divergence}": float(divergence.mean()),
        "objective": float(torch.cat(objectives).mean()),
        **grad_norm_metrics(grad_norms),
        "optimizer_steps": float(len(grad_norms)),
        "truncate_steps": float(np.mean(truncated)),
        "time_train_s": time.perf_counter() - start,
    }
