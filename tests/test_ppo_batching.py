"""Batched PPO passes (`pairs_per_call`, issue 24): one UNet call for several minibatch calls gives the same update.

fp64 on the toys, with the setup of `tests/test_learner_updates.py` (2 inner epochs, grad accumulation 2, advantage,
ratio and grad-norm clipping active, π_θ ≠ π_base): the LoRA after one update and every metric with
`pairs_per_call` = 4 × train_batch_size equal those of one call per minibatch step, while the UNet runs fewer times,
for RLCM, GRPO with β > 0 (the base once per UNet call) and DDPO with classifier-free guidance (cond + uncond in one
call of 2B). A forward hook counts the UNet calls of the update; they are what `learner.ppo.calls` (what `rlcm plan`
prints) says the settings imply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.algorithms import ALGORITHMS
from learner.ppo.calls import update_calls
from learner.ppo.old_log_probs import PassOrder, group_calls, update_groups
from learner.ppo.settings import PPOSettings
from rlcm.config.schema import ConfigError, load_config
from tests.test_learner_updates import PPO, PPO_CASES, PROMPTS, REWARDS, behaviour_trajectory, ppo_learner

# UNet calls of one update of each `PPO_CASES` learner: one call per minibatch step, batched
UNET_CALLS = {
    # 6 samples / batch 2 × 2 steps = 6 calls a pass, 12 in all; windows of 4 calls: groups 0-3 | 4-5 | 6-7 | 8-11
    "rlcm": (12, 4),
    # the same calls, and the base's mean once per group (β > 0)
    "grpo": (24, 8),
    # 1 of 2 steps a sample: 3 calls a pass; windows of 2: groups 0-1 | 2 | 3 | 4-5 (one 2B call each with guidance)
    "ddpo": (6, 4),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def update(case: str, pairs_per_call: int | None, recompute: bool):
    """The LoRA change, the metrics and the UNet calls of one update of the learner of `case`."""
    algorithm = PPO_CASES[case]
    settings = algorithm.settings(pairs_per_call=pairs_per_call, recompute_old_log_probs=recompute)
    learner, theta0 = ppo_learner(algorithm.spec_class, algorithm.model, settings)
    traj = behaviour_trajectory(algorithm.model, algorithm.num_steps)
    calls = []
    hook = learner.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    metrics = learner.train_epoch(REWARDS, np.ones(len(PROMPTS), dtype=bool), traj)
    hook.remove()
    return [p.detach() - start for p, start in zip(learner.params, theta0)], metrics, calls


def implied_calls(case: str, pairs_per_call: int | None, recompute: bool) -> tuple[int, int]:
    """(UNet calls, most images in one) of one update, from the settings alone, as `rlcm plan` counts them."""
    algorithm = PPO_CASES[case]
    settings = algorithm.settings(pairs_per_call=pairs_per_call)
    passes = ALGORITHMS[case].unet_passes_per_call(settings)
    actions = algorithm.num_steps if algorithm.model == "tiny-ddim" else algorithm.num_steps - 1
    found = update_calls(len(PROMPTS), settings, actions, algorithm.extra.get("timestep_fraction", 1.0), recompute)
    guidance = 2 if algorithm.model == "tiny-ddim" else 1
    return found.unet_calls(passes), found.pairs_per_call * guidance


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("case", list(PPO_CASES))
def test_batched_update_equals_one_call_per_minibatch_step(case: str, recompute: bool):
    per_call, per_call_metrics, per_call_unet = update(case, None, recompute)
    batched, batched_metrics, batched_unet = update(case, 4 * PPO["train_batch_size"], recompute)
    scale = max(delta.abs().max().item() for delta in per_call)
    assert scale > 0
    worst = max((a - b).abs().max().item() for a, b in zip(batched, per_call)) / scale
    print(f"{case} recompute={recompute}: max |Δθ_batched − Δθ_per_call| / max |Δθ| = {worst:.2e}")
    assert worst <= 1e-6, f"LoRA change differs by {worst:.2e} of its largest entry"
    assert batched_metrics.keys() == per_call_metrics.keys()
    for key, value in per_call_metrics.items():
        assert batched_metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert per_call_metrics["optimizer_steps"] == 3
    assert recompute or per_call_metrics["clipfrac"] > 0  # π_old = π_base: some ratios clipped (recomputed: ρ₀ = 1)
    # π_old recomputed: the first pass's calls (grouped as it groups them), then (DDPO's subset, 2 epochs) the steps
    # it skips, grouped 4 calls a UNet call
    recomputation = {False: (0, 0), True: (6, 3) if case == "ddpo" else (6, 2)}[recompute]
    expected = UNET_CALLS[case]
    assert (len(per_call_unet), len(batched_unet)) == (expected[0] + recomputation[0], expected[1] + recomputation[1])
    assert (len(batched_unet), max(batched_unet)) == implied_calls(case, 4 * PPO["train_batch_size"], recompute)
    assert (len(per_call_unet), max(per_call_unet)) == implied_calls(case, None, recompute)


def test_groups_stop_at_optimizer_steps_and_passes():
    """Windows of 4 calls, 3 calls a group: 0-2 | 3 | 4-6 | 7 | 8-9; a new pass starts a new group."""
    calls = [(torch.tensor([index]), torch.tensor([0])) for index in range(10)]
    groups = [group.rows.tolist() for group in group_calls(calls, calls_per_group=3, window=4)]
    assert groups == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    order = PassOrder(torch.arange(6), torch.zeros(6, 1, dtype=torch.long))
    settings = PPOSettings(train_batch_size=2, pairs_per_call=4)
    passes = [group.rows.tolist() for group in update_groups([order, order], settings, 1, window=4)]
    assert passes == [[0, 1, 2, 3], [4, 5], [0, 1], [2, 3, 4, 5]]  # calls 0-1 | 2 (pass end) | 3 | 4-5


def test_pairs_per_call_is_a_multiple_of_train_batch_size():
    assert PPOSettings(train_batch_size=2).calls_per_group == 1
    assert PPOSettings(train_batch_size=2, pairs_per_call=8).calls_per_group == 4
    with pytest.raises(ValueError, match="pairs_per_call must be a multiple of train_batch_size"):
        PPOSettings(train_batch_size=2, pairs_per_call=3)
    with pytest.raises(ConfigError, match=r"train: pairs_per_call must be a multiple of train_batch_size \(2\), got 3"):
        load_config("tiny-cpu", ["train.train_batch_size=2", "train.pairs_per_call=3"])
