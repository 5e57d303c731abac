"""The GRPO learner: group-relative advantages on the PPO learner (groups = consecutive `group_size` samples)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.algorithms.grpo.loss import grpo_loss
from learner.ppo.learner import LearnerSpec, PPOLearner


def group_advantages(
    rewards: np.ndarray, valid: np.ndarray, group_size: int, eps: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """A_i = (r_i − mean_g)/(std_g + ε) per group of `group_size` consecutive samples (population std).

    Returns (advantages, valid, groups dropped): a group with any invalid reward is dropped whole (advantage 0,
    invalid).
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    ok = np.asarray(valid, dtype=bool).reshape(-1, group_size).all(axis=1)
    filled = np.where(ok[:, None], r, 0.0)  # invalid rewards may be NaN
    advantages = (filled - filled.mean(axis=1, keepdims=True)) / (filled.std(axis=1, keepdims=True) + eps)
    advantages[~ok] = 0.0
    return advantages.reshape(-1), np.repeat(ok, group_size), int((~ok).sum())


@dataclass
class GRPOLearnerSpec(LearnerSpec):
    def build(self, reduce_gradients=None) -> GRPOLearner:
        return GRPOLearner(self, reduce_gradients)


class GRPOLearner(PPOLearner):
    """Clipped PPO with group-relative advantages and an optional per-step KL to the base (`grpo_loss`)."""

    loss_fn = staticmethod(grpo_loss)

    def epoch_advantages(
        self, prompts: list[str], rewards: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        g = self.settings.group_size
        if len(prompts) % g or any(len(set(prompts[i : i + g])) != 1 for i in range(0, len(prompts), g)):
            raise ValueError(
                f"GRPO needs groups of {g} consecutive samples with one prompt each; got prompts {prompts}"
            )
        advantages, valid, dropped = group_advantages(rewards, valid, g, self.settings.std_eps)
        kept = rewards.reshape(-1, g)[valid.reshape(-1, g).all(axis=1)]
        info = {
            "groups_dropped": dropped,
            "group_reward_std": float(kept.std(axis=1).mean()) if len(kept) else float("nan"),
            "samples_trained": int(valid.sum()),
        }
        return advantages, valid, info
