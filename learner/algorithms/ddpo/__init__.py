"""DDPO (Black et al., 2023): clipped PPO over every step of the DDIM sampler of a Stable Diffusion model.

The policy (`rollout.policies.ddim`): H Gaussian actions per chain, DDIM mean and σ_t = η·√variance as
`DDIMScheduler.step` computes them, classifier-free guidance with the unconditional pass. The update is
PPO's (`learner.ppo.update.ppo_update`): per-prompt normalized advantages clipped to ±adv_clip_max, ratio clipped
to 1 ± clip_range, and each sample trained on a random ⌊timestep_fraction·H⌋ of its steps.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from learner.algorithms.base import OLD_LOG_PROB_DIAGNOSTICS, RolloutAlgorithm
from learner.ppo.settings import PPOSettings
from rollout.samplers import DDIM


class DDPOSettings(PPOSettings):
    """PPO's knobs with DDPO's defaults (ddpo-pytorch `config/base.py`), plus its own."""

    learning_rate: float = Field(3e-4, gt=0)
    adv_clip_max: float = Field(5.0, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    train_batch_size: int = Field(1, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    eta: float = Field(
        1.0, gt=0, description="η of the DDIM sampler: σ_t = η·√variance (η > 0: the policy must be stochastic)"
    )
    timestep_fraction: float = Field(
        1.0, gt=0, le=1, description="train each sample on a random ⌊fraction·H⌋ of its H steps"
    )
    per_prompt_stat_tracking: bool = Field(
        True,
        description="advantages from per-prompt running statistics (stat_tracking.*); false: from the batch's mean and "
        "std",
    )

    @model_validator(mode="after")
    def _random_subset(self) -> DDPOSettings:
        if self.timestep_fraction < 1 and not self.shuffle_timesteps:
            raise ValueError(
                "timestep_fraction < 1 draws a random subset of steps per sample: set shuffle_timesteps true"
            )
        return self


class DDPO(RolloutAlgorithm):
    name = "ddpo"
    title = "DDPO"
    section = "ddpo"
    settings = DDPOSettings
    sampler = DDIM
    summary = (("approx_kl", "approx_kl", ".3g"), ("clipfrac", "clipfrac", ".3f"))
    diagnostics = (
        ("approx_kl", "approx KL (old → new policy)"),
        ("clipfrac", "fraction of clipped ratios"),
        *OLD_LOG_PROB_DIAGNOSTICS,
    )
    optimizes = "clipped PPO over every DDIM step (CFG, η) of Stable Diffusion, per-prompt normalized advantages"
    paper = "Black et al., Training Diffusion Models with Reinforcement Learning (DDPO, 2023)"

    @classmethod
    def eta(cls, config) -> float:
        return config.settings.eta

    @classmethod
    def learner_spec(cls, config, common):
        from learner.algorithms.ddpo.learner import DDPOLearnerSpec

        return DDPOLearnerSpec(
            ppo=config.settings,
            stat_buffer_size=config.stat_tracking.buffer_size,
            stat_min_count=config.stat_tracking.min_count,
            total_optimizer_steps=config.run.epochs * config.optimizer_steps_per_epoch,
            **common,
        )
