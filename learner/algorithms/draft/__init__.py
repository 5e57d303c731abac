"""DRaFT-K and AlignProp: truncated first-order reward ascent through the LCM chain (ROCM's machinery).

- DRaFT-K (Clark et al., 2024): the gradient of r(decode(x̂)) flows through the last K transitions only
  (the earlier states are detached); K fixed (`draft.truncate_steps`), λ = 0 unless set.
- AlignProp (Prabhudesai et al., 2023): randomized truncation, K ~ U{k_min, …, k_max} drawn per objective
  call from the learner's seeded generator (reproducible, resumed with it).
Both accept ROCM's per-step divergence penalty (any λ ≥ 0).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from learner.algorithms.rocm import ROCM
from learner.algorithms.rocm.settings import ROCMSettings


class DRaFTSettings(ROCMSettings):
    lam: float = Field(0.0, ge=0, description="λ of Σ_k D_k to the base (DRaFT: 0)")
    truncate_steps: int = Field(
        1, ge=1, description="K: backprop through the last K transitions + decode (DRaFT-1 by default)"
    )


class AlignPropSettings(ROCMSettings):
    lam: float = Field(0.0, ge=0, description="λ of Σ_k D_k to the base (AlignProp: 0)")
    k_min: int = Field(1, ge=1, description="smallest K drawn per objective call")
    k_max: int | None = Field(None, ge=1, description="largest K drawn (default: all H−1 transitions)")

    @model_validator(mode="after")
    def _no_fixed_truncation(self) -> AlignPropSettings:
        if self.truncate_steps is not None:
            raise ValueError("AlignProp draws K per call: remove truncate_steps, set k_min / k_max instead")
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class DRaFT(ROCM):
    name = "draft"
    title = "DRaFT"
    section = "draft"
    settings = DRaFTSettings
    summary = (("truncate_steps", "K", ".3g"), *ROCM.summary)
    optimizes = "r(x) by backprop through the last K transitions only (optional λ·divergence)"
    paper = "Clark et al., Directly Fine-Tuning Diffusion Models on Differentiable Rewards (DRaFT, 2024)"

    @classmethod
    def check(cls, config) -> None:
        transitions = config.sampling.num_steps - 1
        if config.settings.truncate_steps > transitions:
            raise ValueError(
                f"draft.truncate_steps: K={config.settings.truncate_steps} exceeds the H−1={transitions} transitions "
                "of sampling.num_steps"
            )
        super().check(config)


class AlignProp(ROCM):
    name = "alignprop"
    title = "AlignProp"
    section = "alignprop"
    settings = AlignPropSettings
    summary = (("truncate_steps", "K (mean)", ".3g"), *ROCM.summary)
    diagnostics = (*ROCM.diagnostics, ("truncate_steps", "K, the truncation drawn (mean per epoch)"))
    optimizes = "r(x) by backprop through the last K transitions, K drawn at random per call (optional λ·divergence)"
    paper = "Prabhudesai et al., Aligning Text-to-Image Diffusion Models with Reward Backpropagation (AlignProp, 2023)"

    @classmethod
    def check(cls, config) -> None:
        transitions, s = config.sampling.num_steps - 1, config.settings
        if max(s.k_min, s.k_max or 0) > transitions:
            raise ValueError(
                f"alignprop.k_max: K may be at most the H−1={transitions} transitions of sampling.num_steps"
            )
        super().check(config)

    @classmethod
    def largest_truncation(cls, config) -> int:
        return config.settings.k_max or config.sampling.num_steps - 1

    @classmethod
    def spec_class(cls) -> type:
        from learner.algorithms.draft.learner import AlignPropLearnerSpec

        return AlignPropLearnerSpec
