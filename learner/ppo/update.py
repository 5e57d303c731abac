"""Clipped PPO over a sampler chain (RLCM Algorithm 1; DDPO's update), readable top to bottom.

For each sample i and action step k (LCM: k < H−1; DDIM: k < H), with
ρ = exp(log π_θ(x_{k+1}|x_k) − log π_old(x_{k+1}|x_k)):

    loss = mean_{i,k} max(−A_i·ρ, −A_i·clip(ρ, 1−ε, 1+ε))  (the default `loss_fn`; GRPO adds β·KL to the base)

Timesteps are shuffled per sample, and a sample trains on the first ⌊fraction·steps⌋ of its order (DDPO's
`timestep_fraction`; 1 = all); the optimizer steps once per `grad_accum_steps` minibatches × those steps, after
the gradient norm is clipped. log π_θ is recomputed by the policy's own functions (`rollout.policies`). π_old is
the rollout's log π, or (`recompute_old_log_probs`) the learner's own recomputation (`learner.ppo.old_log_probs`).
With `pairs_per_call`, consecutive minibatch calls of one optimizer window share one UNet call and one backward of
Σ_calls loss_call / window; each call's loss is still computed from its own rows, so the update is the same.
Diagnostics stay on the device and are read once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from learner.guards import grad_norm_metrics
from learner.optim import optimizer_step
from learner.ppo.calls import steps_trained
from learner.ppo.loss import LossFn, SharedEvaluations, StepExtras, clipped_ppo_loss
from learner.ppo.old_log_probs import (
    call_log_prob,
    draw_pass_orders,
    first_pass_groups,
    gap_metrics,
    recompute_log_probs,
    update_groups,
)
from learner.ppo.settings import PPOSettings
from rollout.policies import Transitions


@dataclass
class TrainBatch:
    """What PPO needs from trajectories: the recorded chains bound to their policy, behaviour log-probs, advantages."""

    transitions: Transitions  # states x_k = latents[:, k], actions latents[:, k+1], and π_θ's Gaussian of each
    old_log_probs: torch.Tensor  # [B, actions per chain]
    advantages: torch.Tensor  # [B]
    on_policy: torch.Tensor | None = (
        None  # bool [B]: sampled at the learner's weights (None: all); π_old is recomputed for these only
    )

    def __len__(self) -> int:
        return self.old_log_probs.shape[0]


def ppo_update(
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: TrainBatch,
    settings: PPOSettings,
    generator: torch.Generator,
    reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    loss_fn: LossFn = clipped_ppo_loss,
    timestep_fraction: float = 1.0,
    recompute_old: bool = False,
) -> dict[str, float]:
    """Run `inner_epochs` passes of clipped PPO over `batch`; returns averaged diagnostics.

    `timestep_fraction` < 1 trains each sample on a random subset of its steps (the first of its shuffled order);
    `reduce_gradients` averages gradients across data-parallel learners before clipping;
    `lr_scheduler` steps once per optimizer step; `loss_fn` is the algorithm's per-call loss (default: the clipped
    surrogate; GRPO adds β·KL to the base), its diagnostics other than ratio_* averaged into the metrics.
    `recompute_old`: for the on-policy samples π_old is log π_θ recomputed before the first step with the first
    pass's own calls (`learner.ppo.old_log_probs`), not the behaviour log-probs `batch.old_log_probs` (stale samples
    keep those: the ratio corrects for the policy lag); either way the metrics report the gap between the two on
    the on-policy samples (without recomputation: over the calls made before the first optimizer step).
    """
    num_samples, num_transitions = len(batch), batch.old_log_probs.shape[1]
    if num_transitions < 1:
        raise ValueError("PPO needs at least 2 inference steps (H >= 2): the last step has no log-prob")
    latents = batch.transitions.latents
    device = latents.device
    advantages = batch.advantages.clamp(-settings.adv_clip_max, settings.adv_clip_max)
    trained = steps_trained(num_transitions, timestep_fraction)
    backward_per_step = settings.grad_accum_steps * trained
    orders = draw_pass_orders(
        generator, num_samples, num_transitions, settings.inner_epochs, settings.shuffle_timesteps
    )
    step_infos: list[dict[str, torch.Tensor]] = []  # per minibatch call, on the device (read once, at the end)
    first_pass_devs: list[torch.Tensor] = []
    grad_norms: list[float] = []
    backward_count = 0
    unet.train()
    behaviour = batch.old_log_probs.float()
    on_policy = (
        torch.ones(num_samples, dtype=torch.bool, device=device)
        if batch.on_policy is None
        else batch.on_policy.to(device)
    )
    learner_log_probs = torch.full_like(behaviour, float("nan"))  # log π_θ at the rollout's weights
    old_log_probs = behaviour
    if recompute_old and on_policy.any():
        # later epochs may visit steps outside the first pass's subset: recompute every step, first pass's calls first
        steps = trained if settings.inner_epochs == 1 else num_transitions
        calls = first_pass_groups(orders[0], settings, trained, steps, backward_per_step)
        learner_log_probs = recompute_log_probs(unet, batch.transitions, calls, behaviour.shape)
        learner_log_probs[~on_policy] = float("nan")
        old_log_probs = torch.where(torch.isnan(learner_log_probs), behaviour, learner_log_probs)
    for group in update_groups(orders, settings, trained, backward_per_step):
        rows, k = group.rows.to(device), group.k.to(device)
        # one UNet call for the group's pairs; each minibatch call's loss from its own rows, as if called alone
        log_prob, mean, std = call_log_prob(unet, batch.transitions, rows, k)
        shared = SharedEvaluations(unet, batch.transitions, rows, k)
        losses = []
        for span in group.spans:
            idx, k_idx = rows[span], k[span]
            extras = StepExtras(unet, batch.transitions, idx, k_idx, mean[span], std[span], shared, span)
            loss, info = loss_fn(log_prob[span], old_log_probs[idx, k_idx], advantages[idx], settings, extras)
            if not grad_norms:  # before the first optimizer step: the weights the rollout sampled with
                first_pass_devs.append((torch.exp(log_prob[span] - old_log_probs[idx, k_idx]) - 1).abs().max())
                if not recompute_old:
                    learner_log_probs[idx, k_idx] = torch.where(
                        on_policy[idx], log_prob[span].detach().float(), float("nan")
                    )
            losses.append(loss / backward_per_step)
            step_infos.append({"loss": loss.detach(), **info})
        torch.stack(losses).sum().backward()  # Σ_calls loss/window: the gradient of the calls' separate backwards
        backward_count += len(group.spans)
        if backward_count % backward_per_step == 0:
            grad_norms.append(optimizer_step(optimizer, params, settings.max_grad_norm, reduce_gradients, lr_scheduler))
    if partial := backward_count % backward_per_step:  # a partial window (e.g. invalid samples were dropped)
        for p in params:  # each loss was divided by the full window; weight by the true count instead
            if p.grad is not None:
                p.grad.mul_(backward_per_step / partial)
        grad_norms.append(optimizer_step(optimizer, params, settings.max_grad_norm, reduce_gradients, lr_scheduler))
    unet.eval()
    infos = {key: torch.stack([s[key] for s in step_infos]).cpu().tolist() for key in step_infos[0]}  # one sync
    metrics = {key: float(np.mean(values)) for key, values in infos.items() if not key.startswith("ratio_")}
    metrics["ratio_min"] = min(infos["ratio_min"])
    metrics["ratio_max"] = max(infos["ratio_max"])
    metrics["ratio_first_pass_max_dev"] = max(torch.stack(first_pass_devs).cpu().tolist())
    metrics["old_logprob_recomputed"] = recompute_old
    metrics.update(gap_metrics(behaviour, learner_log_probs))
    metrics.update(grad_norm_metrics(grad_norms))
    metrics["optimizer_steps"] = float(len(grad_norms))
    metrics["learning_rate"] = float(optimizer.param_groups[0]["lr"])
    return metrics
