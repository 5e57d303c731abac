"""One D3PO update over recorded pairs: per minibatch of pairs and step k, one UNet call on both samples of every pair
with the LoRA (log π_θ) and one without it (log π_ref, no grad), then `d3po_loss`.

A pair is two consecutive samples (rows 2p, 2p+1); `sign[p]` is +1 when the first is preferred, −1 when the second is,
0 for a pair that trains nothing. Pairs are shuffled per pass and each pair's steps are shuffled once for both of its
samples (D3PO, as DDPO: `learner.ppo.old_log_probs.draw_pass_orders`); a pair trains on the first
⌊timestep_fraction·steps⌋ of its order. The optimizer steps every `grad_accum_steps` minibatches × those steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from learner.algorithms.d3po.loss import d3po_loss
from learner.guards import grad_norm_metrics
from learner.optim import optimizer_step
from learner.ppo.old_log_probs import call_log_prob, draw_pass_orders, pass_calls
from learner.ppo.update import steps_trained
from rollout.policies import Transitions


@torch.no_grad()
def ref_log_prob(unet: torch.nn.Module, transitions: Transitions, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log π_ref(x_{k+1} | x_k): the frozen base (LoRA disabled) at the recorded states."""
    unet.disable_adapters()
    try:
        return call_log_prob(unet, transitions, rows, k)[0]
    finally:
        unet.enable_adapters()


def d3po_update(
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    transitions: Transitions,
    sign: torch.Tensor,
    num_transitions: int,
    settings,
    generator: torch.Generator,
    reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """`inner_epochs` passes of the D3PO loss over the pairs; averaged diagnostics, grad norms, optimizer steps."""
    if num_transitions < 1:
        raise ValueError("D3PO needs at least 2 inference steps (H >= 2): the last LCM step has no log-prob")
    device = transitions.latents.device
    trained = steps_trained(num_transitions, settings.timestep_fraction)
    window = settings.grad_accum_steps * trained
    orders = draw_pass_orders(generator, len(sign), num_transitions, settings.inner_epochs, settings.shuffle_timesteps)
    infos: list[dict[str, torch.Tensor]] = []
    grad_norms: list[float] = []
    calls = 0
    unet.train()
    for order in orders:
        for pairs, k in pass_calls(order, settings.train_batch_size // 2, trained):
            pairs, k = pairs.to(device), k.to(device)
            rows, steps = torch.cat([2 * pairs, 2 * pairs + 1]), torch.cat([k, k])
            log_pi = call_log_prob(unet, transitions, rows, steps)[0].chunk(2)
            log_ref = ref_log_prob(unet, transitions, rows, steps).chunk(2)
            s = sign[pairs]
            first_wins = s >= 0
            loss, info = d3po_loss(
                torch.where(first_wins, log_pi[0], log_pi[1]),
                torch.where(first_wins, log_ref[0], log_ref[1]),
                torch.where(first_wins, log_pi[1], log_pi[0]),
                torch.where(first_wins, log_ref[1], log_ref[0]),
                s.abs().to(log_pi[0].dtype),
                settings.beta,
                settings.clip_eps,
            )
            (loss / window).backward()
            infos.append({"loss": loss.detach(), **info})
            calls += 1
            if calls % window == 0:
                grad_norms.append(
                    optimizer_step(optimizer, params, settings.max_grad_norm, reduce_gradients, lr_scheduler)
                )
    if partial := calls % window:  # fewer minibatches than a window: weight by the true count
        for p in params:
            if p.grad is not None:
                p.grad.mul_(window / partial)
        grad_norms.append(optimizer_step(optimizer, params, settings.max_grad_norm, reduce_gradients, lr_scheduler))
    unet.eval()
    values = {key: torch.stack([i[key] for i in infos]).float().cpu().numpy() for key in infos[0]}  # one sync
    metrics = {key: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for key, v in values.items()}
    metrics.update(grad_norm_metrics(grad_norms))
    metrics["optimizer_steps"] = float(len(grad_norms))
    metrics["learning_rate"] = float(optimizer.param_groups[0]["lr"])
    return metrics
