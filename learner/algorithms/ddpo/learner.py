"""The DDPO learner: the PPO learner on a DDIM pipeline, with DDPO's timestep subset and optional batch statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.ppo.learner import LearnerSpec, PPOLearner


def batch_advantages(rewards: np.ndarray) -> np.ndarray:
    """A = (r − mean)/(std + 1e-8) over the whole batch (DDPO without per-prompt stat tracking)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)


@dataclass
class DDPOLearnerSpec(LearnerSpec):
    def build(self, reduce_gradients=None) -> DDPOLearner:
        return DDPOLearner(self, reduce_gradients)


class DDPOLearner(PPOLearner):
    """Clipped PPO over every DDIM step; log π recomputed with CFG and the recorded negative embeddings."""

    @property
    def timestep_fraction(self) -> float:
        return self.settings.timestep_fraction

    def advantages(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        if self.settings.per_prompt_stat_tracking:
            return super().advantages(prompts, rewards)
        return batch_advantages(rewards)
