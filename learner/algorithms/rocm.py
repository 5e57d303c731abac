"""ROCM (RLHF on consistency models, 2025): first-order reward ascent through the chain, per-step f-divergence to the base."""

from __future__ import annotations

import functools

from learner.algorithms.base import FirstOrderAlgorithm
from learner.settings import ROCMSettings


class ROCM(FirstOrderAlgorithm):
    name = "rocm"
    section = "rocm"
    settings = ROCMSettings
    summary = (("divergence_mean", "divergence", ".4g"), ("objective", "objective", ".4f"))
    diagnostics = (
        ("divergence_mean", "Σ_k divergence to the base per chain (mean; λ's target dashed)"),
        ("objective", "objective (reward − λ·divergence)"),
        ("grad_norm", "gradient norm"),
        ("lam", "λ (per epoch)"),
    )
    optimizes = "r(x) − λ·Σ_k D(π_θ ‖ π_base) by backprop through the whole chain (or the last K steps)"
    paper = "Reward fine-tuning of consistency models, ROCM (2025)"

    @classmethod
    def spec_class(cls) -> type:
        from learner.rocm_learner import ROCMLearnerSpec

        return ROCMLearnerSpec

    @classmethod
    def learner_spec(cls, config, common):
        from rewards_service.differentiable import build_differentiable_reward

        s = config.sampling
        return cls.spec_class()(
            rocm=config.settings, num_steps=s.num_steps, guidance_scale=s.guidance_scale, height=s.height, width=s.width,
            original_inference_steps=s.original_inference_steps,
            reward_factory=functools.partial(build_differentiable_reward, config.reward.name, **config.reward.options), **common,
        )
