"""Held-out judged pairs: a fixed share of the pairs (by id, `preferences.is_held_out`) never trains; the learner keeps
the most recent ones and, after each update, scores the current policy on every step of them with `d3po_loss`'s
diagnostics (no grad): the implicit reward margin β·[(log π_θ − log π_ref)(w) − (log π_θ − log π_ref)(l)] and its
share > 0 (the preference accuracy)."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from learner.algorithms.d3po.loss import d3po_loss
from learner.algorithms.d3po.preferences import Pair, is_held_out
from learner.algorithms.d3po.update import ref_log_prob
from learner.ppo.old_log_probs import call_log_prob
from rollout.policies import Transitions
from rollout.trajectory import Trajectory


def held_out_mask(pairs: list[Pair], sign: np.ndarray, fraction: float) -> np.ndarray:
    """The decided pairs (sign ≠ 0) that are held out: they go to `HeldOutPairs`, never to training."""
    return np.array([s != 0 and is_held_out(p.pair_id, fraction) for p, s in zip(pairs, sign)], dtype=bool)


class HeldOutPairs:
    """The most recent `capacity` held-out pairs: each a 2-sample trajectory (kept on the CPU) and its sign (+1: the
    first sample is preferred, −1: the second)."""

    def __init__(self, capacity: int):
        self.pairs: deque[tuple[Trajectory, int]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, pair: Trajectory, sign: int) -> None:
        self.pairs.append((pair.to("cpu"), int(sign)))

    def batch(self) -> tuple[Trajectory, torch.Tensor]:
        """All kept pairs as one trajectory (pair p: rows 2p, 2p+1) and their signs."""
        return Trajectory.concat([t for t, _ in self.pairs]), torch.tensor([s for _, s in self.pairs])


@torch.no_grad()
def held_out_metrics(
    unet: torch.nn.Module, transitions: Transitions, sign: torch.Tensor, pairs_per_call: int, beta: float
) -> dict[str, float]:
    """The policy's implicit reward margin (mean) and preference accuracy over every (pair, step) of the held-out pairs,
    as `d3po_loss` reports them for trained pairs; `held_out_pairs`: how many pairs."""
    pairs, steps = len(sign), transitions.latents.shape[1] - 1
    log_pi = torch.empty(2 * pairs, steps, dtype=torch.float64, device=sign.device)
    log_ref = torch.empty_like(log_pi)
    unet.eval()
    for k in range(steps):
        for start in range(0, pairs, pairs_per_call):
            chosen = torch.arange(start, min(start + pairs_per_call, pairs), device=sign.device)
            rows = torch.cat([2 * chosen, 2 * chosen + 1])
            ks = torch.full_like(rows, k)
            log_pi[rows, k] = call_log_prob(unet, transitions, rows, ks)[0].double()
            log_ref[rows, k] = ref_log_prob(unet, transitions, rows, ks).double()
    first, second = log_pi[0::2], log_pi[1::2]
    ref_first, ref_second = log_ref[0::2], log_ref[1::2]
    wins = (sign > 0)[:, None]
    _, info = d3po_loss(
        torch.where(wins, first, second).flatten(),
        torch.where(wins, ref_first, ref_second).flatten(),
        torch.where(wins, second, first).flatten(),
        torch.where(wins, ref_second, ref_first).flatten(),
        torch.ones(pairs * steps, dtype=log_pi.dtype, device=sign.device),
        beta,
        None,
    )
    return {
        "held_out_implicit_margin": float(info["implicit_margin"]),
        "held_out_preference_accuracy": float(info["preference_accuracy"]),
        "held_out_pairs": float(pairs),
    }
