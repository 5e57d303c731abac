"""GRPO on the LCM policy (group-relative PPO, as Flow-GRPO / DanceGRPO apply it to diffusion samplers).

G samples per prompt in one epoch (`group_size`, consecutive in a rollout batch; optionally the same initial
noise), advantage A_i = (r_i − mean_group r)/(std_group r + ε), clipped PPO over the chain, and optionally
β·KL(π_θ ‖ π_base) per step at the recorded states (`kl_coef`). A group with an invalid reward is dropped whole.
"""

from __future__ import annotations

from pydantic import Field

from learner.algorithms.base import OLD_LOG_PROB_DIAGNOSTICS, RolloutAlgorithm
from learner.ppo.settings import PPOSettings


class GRPOSettings(PPOSettings):
    """PPO's hyperparameters plus the group's."""

    group_size: int = Field(4, ge=2, description="G, samples per prompt in one epoch; must divide sampling.batch_size")
    same_noise: bool = Field(False, description="the G samples of a group start from the same initial noise x_0")
    std_eps: float = Field(1e-4, gt=0, description="ε in (r − mean)/(std + ε)")
    kl_coef: float = Field(0.0, ge=0, description="β of the per-step KL to the LoRA-free base (0: none)")


class GRPO(RolloutAlgorithm):
    name = "grpo"
    title = "GRPO"
    section = "grpo"
    settings = GRPOSettings
    summary = (
        ("approx_kl", "approx_kl", ".3g"),
        ("clipfrac", "clipfrac", ".3f"),
        ("groups_dropped", "groups dropped", ".0f"),
    )
    diagnostics = (
        ("approx_kl", "approx KL (old → new policy)"),
        ("clipfrac", "fraction of clipped ratios"),
        ("kl_to_base", "KL to the base per step (mean)"),
        ("group_reward_std", "reward std within a group (mean)"),
        *OLD_LOG_PROB_DIAGNOSTICS,
    )
    optimizes = "clipped PPO with group-relative advantages (G samples per prompt), optional β·KL to the base"
    paper = "Shao et al., DeepSeekMath (GRPO, 2024); Liu et al., Flow-GRPO (2025)"

    @classmethod
    def check(cls, config) -> None:
        g, batch = config.settings.group_size, config.sampling.batch_size
        if batch % g:
            raise ValueError(
                f"grpo.group_size: {g} does not divide sampling.batch_size={batch}; a group must lie within one "
                "rollout batch"
            )
        super().check(config)

    @classmethod
    def unet_passes_per_call(cls, settings) -> int:
        return 2 if settings.kl_coef > 0 else 1  # the base's mean at the same pairs, once per UNet call

    @classmethod
    def group_size(cls, config) -> int:
        return config.settings.group_size

    @classmethod
    def noise_group_size(cls, config) -> int:
        return config.settings.group_size if config.settings.same_noise else 1

    @classmethod
    def learner_spec(cls, config, common):
        from learner.algorithms.grpo.learner import GRPOLearnerSpec

        return GRPOLearnerSpec(
            ppo=config.settings,
            stat_buffer_size=1,
            stat_min_count=1,
            total_optimizer_steps=config.run.epochs * config.optimizer_steps_per_epoch,
            **common,
        )
