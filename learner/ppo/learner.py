"""The PPO learner (RLCM's; GRPO's and DDPO's subclass it): per-prompt advantages, clipped PPO on the UNet's LoRA
over the rollout actors' trajectories."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.base import BaseLearner, BaseLearnerSpec, shard
from learner.ppo.loss import LossFn, clipped_ppo_loss
from learner.ppo.settings import PPOSettings
from learner.ppo.update import TrainBatch, ppo_update
from learner.stat_tracker import PerPromptStatTracker
from rollout.policies import policy_for
from rollout.trajectory import Trajectory


@dataclass(kw_only=True)
class LearnerSpec(BaseLearnerSpec):
    """Everything a PPO learner needs to build itself: typed settings, no strings to parse."""

    ppo: PPOSettings
    stat_buffer_size: int
    stat_min_count: int
    nan_loss_versions: tuple[
        int, ...
    ] = ()  # fault injection (faults.nan_loss_epochs): updates from these versions get NaN advantages

    def build(self, reduce_gradients=None) -> PPOLearner:
        return PPOLearner(self, reduce_gradients)


class PPOLearner(BaseLearner):
    """Clipped PPO (RLCM Algorithm 1) with per-prompt stat tracking; `train` turns trajectories into version v+1.

    The shuffling generator is seeded with `seed` alone: every rank shuffles its shard the same way.
    """

    def __init__(self, spec: LearnerSpec, reduce_gradients=None):
        super().__init__(spec, reduce_gradients)
        self.tracker = PerPromptStatTracker(spec.stat_buffer_size, spec.stat_min_count)

    @property
    def settings(self) -> PPOSettings:
        return self.spec.ppo

    loss_fn: LossFn = staticmethod(clipped_ppo_loss)  # the algorithm's per-call loss (`learner.ppo.loss.LossFn`)

    @property
    def timestep_fraction(self) -> float:
        """Share of a sample's action steps one PPO pass trains on (RLCM: all)."""
        return 1.0

    def advantages(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        return self.tracker.update(prompts, rewards)

    def epoch_advantages(
        self, prompts: list[str], rewards: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Advantages of the valid samples (others 0), which samples stay valid, and extra metrics."""
        keep = np.flatnonzero(valid)
        advantages = np.zeros(len(prompts))
        advantages[keep] = self.advantages([prompts[i] for i in keep], rewards[keep])
        return advantages, valid, {}

    def train_epoch(
        self, rewards: np.ndarray, valid: np.ndarray, *trajectories: Trajectory, world_size: int = 1
    ) -> dict[str, float]:
        """Advantages from the valid samples' rewards (all ranks alike), one PPO update on this rank's shard.

        With one learner invalid samples are dropped; with several they stay with advantage 0, so
        every rank takes the same number of optimizer steps.
        """
        batch = Trajectory.concat(list(trajectories))
        versions = np.concatenate([np.full(len(t), t.policy_version) for t in trajectories])
        advantages, valid, info = self.epoch_advantages(
            batch.prompts, np.asarray(rewards, dtype=np.float64), np.asarray(valid, dtype=bool)
        )
        keep = np.flatnonzero(valid)
        if len(keep) == 0:
            return {"skipped_update": True, **info}
        rows = keep.tolist() if world_size == 1 else shard(len(batch), self.rank, world_size)
        if len(rows) < len(batch):
            batch, advantages, versions = batch.select(rows), advantages[rows], versions[rows]
        if self.version in self.spec.nan_loss_versions:
            advantages = np.full_like(advantages, np.nan)  # every loss of this update is NaN
        return {**self.train(batch, advantages, on_policy=versions == self.version), **info}

    def train(
        self, trajectory: Trajectory, advantages: np.ndarray, on_policy: np.ndarray | None = None
    ) -> dict[str, float]:
        """One PPO update on a batch whose advantages are already computed; bumps the version.

        `on_policy` [B]: the samples drawn at this learner's weights (default: all if the trajectory's version is
        the learner's); π_old is recomputed for those only (`recompute_old_log_probs`)."""
        if on_policy is None:
            on_policy = np.full(len(trajectory), trajectory.policy_version == self.version)
        trajectory = trajectory.to(self.device)
        batch = TrainBatch(
            transitions=policy_for(self.pipe).transitions(self.pipe, trajectory),
            # the behaviour policy's; PPO may recompute π_old (recompute_old_log_probs)
            old_log_probs=trajectory.log_probs,
            advantages=torch.as_tensor(advantages, dtype=torch.float32, device=self.device),
            on_policy=torch.as_tensor(on_policy, dtype=torch.bool, device=self.device),
        )
        metrics = ppo_update(
            self.pipe.unet,
            self.optimizer,
            self.params,
            batch,
            self.settings,
            self.generator,
            self.reduce_gradients,
            self.lr_scheduler,
            loss_fn=self.loss_fn,
            timestep_fraction=self.timestep_fraction,
            recompute_old=self.settings.recomputes_old_log_probs(self.pipe.unet.dtype),
        )
        metrics.update({f"stat_tracker_{k}": v for k, v in self.tracker.stats().items()})
        self.version += 1
        return metrics

    def extra_state(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
