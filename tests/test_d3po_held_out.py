"""D3PO's held-out judged pairs: never trained on, kept (the most recent few), and scored after each update; the
implicit reward margin and preference accuracy equal a recomputation from the policy's log-probs (fp64)."""

from __future__ import annotations

import math

import numpy as np
import torch

from learner.algorithms.d3po.held_out import HeldOutPairs
from learner.algorithms.d3po.learner import make_pairs
from learner.algorithms.d3po.preferences import is_held_out
from learner.algorithms.d3po.settings import PreferenceSettings
from rollout.policies.chain_math import gaussian_log_prob
from tests.test_d3po import REWARDS, SIGNS, VALID, d3po_learner, pair_trajectory
from tests.test_learner_updates import gaussian_of, reference_pipes


def test_held_out_fraction_picks_by_pair_id_and_defaults_to_a_tenth_for_people():
    assert is_held_out("f" * 24 + "00000000", 0.1) and not is_held_out("0" * 24 + "ffffffff", 0.1)
    assert not is_held_out("0" * 32, 0.0)
    assert PreferenceSettings(source="human").held_out() == 0.1 and PreferenceSettings().held_out() == 0.0
    assert PreferenceSettings(held_out_fraction=0.25).held_out() == 0.25


def test_the_buffer_keeps_the_most_recent_pairs():
    traj = pair_trajectory("tiny", 2)
    kept = HeldOutPairs(capacity=2)
    for p in range(3):
        kept.add(traj.select([2 * p, 2 * p + 1]), 1 if p % 2 else -1)
    batch, sign = kept.batch()
    assert batch.prompts == ["a dog", "a dog", "a fox", "a fox"] and sign.tolist() == [1, -1]


@torch.no_grad()
def log_ratios(pipe, base, traj, row: int, steps: int) -> torch.Tensor:
    """log π_θ − log π_ref of sample `row` at each step, from the policy's public functions."""
    out = []
    for k in range(steps):
        rows, ks = torch.tensor([row]), torch.tensor([k])
        action = traj.latents[rows, k + 1]
        out.append(
            gaussian_log_prob(action, *gaussian_of(pipe, traj, rows, ks))
            - gaussian_log_prob(action, *gaussian_of(base, traj, rows, ks))
        )
    return torch.cat(out)


def test_held_out_pairs_never_train_and_are_scored_as_a_recomputation_says():
    traj = pair_trajectory("tiny", 3)
    pairs = make_pairs(traj, np.zeros(len(traj)), REWARDS, VALID)
    cut = {p: int(pairs[p].pair_id[-8:], 16) / 16**8 for p in SIGNS}
    held, trained = sorted(cut, key=cut.get)  # the pair with the lower id digits is held out
    fraction = (cut[held] + cut[trained]) / 2
    learner, _ = d3po_learner("tiny", preferences={"held_out_fraction": fraction})
    metrics = learner.train_epoch(REWARDS, VALID, traj)
    assert (metrics["pairs_held_out"], metrics["preferences_used"], metrics["samples_trained"]) == (1, 1, 2)

    tied = REWARDS.copy()
    tied[2 * held + 1] = tied[2 * held]  # the same update with the held-out pair a tie: it trained nothing
    alone, _ = d3po_learner("tiny")
    alone.train_epoch(tied, VALID, traj)
    assert all(torch.equal(a, b) for a, b in zip(learner.params, alone.params)), "the held-out pair never trains"

    pipe, _, base = reference_pipes("tiny", [p.detach().clone() for p in learner.params])
    steps = traj.log_probs.shape[1]
    first, second = (log_ratios(pipe, base, traj, 2 * held + i, steps) for i in range(2))
    win, lose = (first, second) if SIGNS[held] > 0 else (second, first)
    margin = learner.settings.beta * (win - lose)
    assert metrics["held_out_pairs"] == 1 and margin.abs().min() > 0, "a margin to compare"
    assert math.isclose(metrics["held_out_implicit_margin"], float(margin.mean()), rel_tol=1e-9, abs_tol=1e-12)
    assert metrics["held_out_preference_accuracy"] == float((margin > 0).double().mean())
