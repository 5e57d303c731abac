"""ROCM (RLHF on consistency models, 2025): first-order reward ascent through the chain, per-step f-divergence to the
base."""

from __future__ import annotations

import functools

from learner.algorithms.base import FirstOrderAlgorithm
from learner.algorithms.rocm.settings import ROCMSettings


class ROCM(FirstOrderAlgorithm):
    name = "rocm"
    title = "ROCM"
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
    def largest_truncation(cls, config) -> int | None:
        """The largest K the chain backpropagates through (None: the whole chain)."""
        return config.settings.truncate_steps

    @classmethod
    def grad_calls(cls, config) -> int:
        """UNet calls per chain that run with grad (`learner.first_order.chain.sample_chain`): with the divergence
        penalty all H policy and H−1 reference calls; without it the last K+1 policy calls under truncation K, else
        all H."""
        s, steps = config.settings, config.sampling.num_steps
        if s.divergence != "none" and (s.lam == "auto" or s.lam > 0):
            return 2 * steps - 1
        k = cls.largest_truncation(config)
        return steps if k is None else min(k + 1, steps)

    @classmethod
    def spec_class(cls) -> type:
        from learner.algorithms.rocm.learner import ROCMLearnerSpec

        return ROCMLearnerSpec

    @classmethod
    def learner_spec(cls, config, common):
        from rewards_service.registry import build_differentiable_reward

        s = config.sampling
        return cls.spec_class()(
            rocm=config.settings,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            height=s.height,
            width=s.width,
            original_inference_steps=s.original_inference_steps,
            reward_factory=functools.partial(build_differentiable_reward, config.reward.name, **config.reward.options),
            **common,
        )
