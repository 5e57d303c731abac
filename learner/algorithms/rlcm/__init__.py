"""RLCM (Oertell et al., 2024): clipped PPO over the LCM sampler on the rollout actors' trajectories."""

from __future__ import annotations

from learner.algorithms.base import OLD_LOG_PROB_DIAGNOSTICS, RolloutAlgorithm
from learner.ppo.settings import PPOSettings


class RLCM(RolloutAlgorithm):
    name = "rlcm"
    title = "RLCM"
    section = "train"
    settings = PPOSettings
    summary = (("approx_kl", "approx_kl", ".3g"), ("clipfrac", "clipfrac", ".3f"))
    diagnostics = (
        ("approx_kl", "approx KL (old → new policy)"),
        ("clipfrac", "fraction of clipped ratios"),
        *OLD_LOG_PROB_DIAGNOSTICS,
    )
    optimizes = "clipped PPO on a black-box reward, per-prompt normalized advantages"
    paper = "Oertell et al., RL for Consistency Models (2024)"

    @classmethod
    def learner_spec(cls, config, common):
        from learner.ppo.learner import LearnerSpec

        return LearnerSpec(
            ppo=config.train,
            stat_buffer_size=config.stat_tracking.buffer_size,
            stat_min_count=config.stat_tracking.min_count,
            total_optimizer_steps=config.run.epochs * config.optimizer_steps_per_epoch,
            **common,
        )
