"""π_old as the learner computes it, and its gap to the rollout's log π (the trust metric of the rollout/learner split).

A rollout actor records log π_behaviour at batch `sampling.batch_size` in eval mode; the learner evaluates log π_θ at
`train_batch_size` rows per UNet call. In bf16 the two differ (kernels block differently per batch) although the
weights are the same, and PPO's clip range (1e-4) is smaller than that noise. So before the first optimizer step the
learner recomputes π_old with exactly the calls its first training pass will make (same rows per call, same (i, k)
grouping, same dtype and mode, no grad): the first pass then starts at ratio ρ = 1 exactly. With `pairs_per_call`,
consecutive calls are evaluated in one UNet call (`CallGroup`), and the recomputation evaluates the same groups.

    gap_{i,k} = |log π_behaviour(x_{k+1}|x_k) − log π_learner(x_{k+1}|x_k)|   at the same weights
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from learner.ppo.calls import group_bounds
from learner.ppo.settings import PPOSettings
from rollout.policies import Transitions
from rollout.policies.chain_math import gaussian_log_prob


@dataclass
class PassOrder:
    """The order one inner epoch visits the (sample, step) pairs: a sample permutation and each sample's step order."""

    samples: torch.Tensor  # [B] permutation of the samples
    steps: torch.Tensor  # [B, T] each sample's order of its T action steps


def draw_pass_orders(
    generator: torch.Generator, num_samples: int, num_transitions: int, inner_epochs: int, shuffle_timesteps: bool
) -> list[PassOrder]:
    """Every inner epoch's order, drawn up front in the order PPO always drew them (so runs stay reproducible)."""
    orders = []
    for _ in range(inner_epochs):
        samples = torch.randperm(num_samples, generator=generator)
        if shuffle_timesteps:
            steps = torch.stack([torch.randperm(num_transitions, generator=generator) for _ in range(num_samples)])
        else:
            steps = torch.arange(num_transitions).expand(num_samples, -1)
        orders.append(PassOrder(samples, steps))
    return orders


def pass_calls(
    order: PassOrder, train_batch_size: int, steps_per_sample: int, first_step: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, k) of each minibatch call of one pass, in order: minibatches of `train_batch_size` samples, then step j
    of each (j from `first_step` to `steps_per_sample` − 1)."""
    for start in range(0, len(order.samples), train_batch_size):
        rows = order.samples[start : start + train_batch_size]
        for j in range(first_step, steps_per_sample):
            yield rows, order.steps[rows, j]


@dataclass
class CallGroup:
    """Consecutive minibatch calls evaluated in one UNet call: their pairs concatenated, and each call's span."""

    rows: torch.Tensor
    k: torch.Tensor
    spans: list[slice]


def group_calls(
    calls: Iterable[tuple[torch.Tensor, torch.Tensor]], calls_per_group: int, window: int | None = None, first: int = 0
) -> Iterator[CallGroup]:
    """Up to `calls_per_group` consecutive calls per group; a group never spans an optimizer step (one every `window`
    calls, counted from call number `first`): `learner.ppo.calls.group_bounds`."""
    calls = list(calls)
    for bounds in group_bounds(len(calls), calls_per_group, window, first):
        yield _concat([calls[i] for i in bounds])


def _concat(calls: list[tuple[torch.Tensor, torch.Tensor]]) -> CallGroup:
    """One group of the calls: rows and steps concatenated in call order, call j at spans[j]."""
    ends = np.cumsum([len(rows) for rows, _ in calls]).tolist()
    spans = [slice(start, end) for start, end in zip([0, *ends[:-1]], ends)]
    return CallGroup(torch.cat([rows for rows, _ in calls]), torch.cat([k for _, k in calls]), spans)


def update_groups(
    orders: list[PassOrder], settings: PPOSettings, steps_per_sample: int, window: int
) -> Iterator[CallGroup]:
    """The UNet calls of an update's passes, in order: `group_calls` within each pass (a group never spans two)."""
    first = 0
    for order in orders:
        calls = list(pass_calls(order, settings.train_batch_size, steps_per_sample))
        yield from group_calls(calls, settings.calls_per_group, window, first)
        first += len(calls)


def first_pass_groups(
    order: PassOrder, settings: PPOSettings, trained: int, steps: int, window: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, k) of the first pass's UNet calls as `update_groups` makes them, then of its minibatches' steps
    `trained` … `steps` − 1 (those later passes may visit)."""
    first = group_calls(pass_calls(order, settings.train_batch_size, trained), settings.calls_per_group, window)
    rest = group_calls(pass_calls(order, settings.train_batch_size, steps, trained), settings.calls_per_group)
    for group in (*first, *rest):
        yield group.rows, group.k


def call_log_prob(
    unet: torch.nn.Module, transitions: Transitions, rows: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """log π_θ(x_{k+1} | x_k) of one call's (rows, k), and the action's mean and std (for a KL to the base)."""
    mean, std = transitions.gaussian(unet, rows, k)
    return gaussian_log_prob(transitions.latents[rows, k + 1], mean, std), mean, std


@torch.no_grad()
def recompute_log_probs(unet: torch.nn.Module, transitions: Transitions, calls, shape: torch.Size) -> torch.Tensor:
    """log π_θ [B, T] from the given calls, in their order and grouping (NaN where no call visits a pair).

    The caller sets the UNet's mode (train, as in the training passes)."""
    device = transitions.latents.device
    out = torch.full(shape, float("nan"), device=device)
    for rows, k in calls:
        rows, k = rows.to(device), k.to(device)
        out[rows, k] = call_log_prob(unet, transitions, rows, k)[0].float()
    return out


def gap_metrics(behaviour: torch.Tensor, learner: torch.Tensor) -> dict:
    """Median and max of |behaviour − learner| over the pairs both hold (learner NaN: not computed), and the
    median per denoising step k (`old_logprob_gap_step`: {"k": value}, steps without a pair left out)."""
    gap = (behaviour.float() - learner.float()).abs()
    seen = ~torch.isnan(gap)
    if not seen.any():
        return {}
    per_step = {str(k): float(gap[seen[:, k], k].median()) for k in range(gap.shape[1]) if seen[:, k].any()}
    return {
        "old_logprob_gap_median": float(gap[seen].median()),
        "old_logprob_gap_max": float(gap[seen].max()),
        "old_logprob_gap_step": per_step,
    }
