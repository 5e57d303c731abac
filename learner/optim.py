"""The optimizer every learner shares: AdamW on the LoRA, an optional learning-rate schedule, and one step
(all-reduce across data-parallel ranks, grad-norm clip, step, zero, schedule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from learner.guards import step_if_finite

ReduceGradients = Callable[[list[torch.nn.Parameter]], None]


class AdamSettings(Protocol):
    learning_rate: float
    adam_beta1: float
    adam_beta2: float
    adam_weight_decay: float
    adam_epsilon: float


def build_optimizer(params: list[torch.nn.Parameter], settings: AdamSettings) -> torch.optim.Optimizer:
    """AdamW on the LoRA parameters with the settings' lr, betas, weight decay and epsilon (every algorithm alike)."""
    return torch.optim.AdamW(
        params,
        lr=settings.learning_rate,
        betas=(settings.adam_beta1, settings.adam_beta2),
        weight_decay=settings.adam_weight_decay,
        eps=settings.adam_epsilon,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """`constant`, or `linear` decay to 0 over `total_steps` optimizer steps (diffusers' schedules)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(schedule, optimizer, num_warmup_steps=0, num_training_steps=max(total_steps, 1))


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    max_grad_norm: float,
    reduce_gradients: ReduceGradients | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """Average gradients over ranks (if data-parallel), clip their norm, step, zero them; returns the pre-clip norm.

    A non-finite norm (a NaN/Inf loss or gradient) skips the step: nothing is applied
    (learner.guards.step_if_finite)."""
    if reduce_gradients is not None:
        reduce_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    step_if_finite(optimizer, params, grad_norm)  # a NaN/Inf loss or gradient: skipped, counted in nonfinite_steps
    if lr_scheduler is not None:
        lr_scheduler.step()
    return float(grad_norm)
