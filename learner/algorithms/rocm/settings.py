"""ROCM's typed settings (DRaFT's and AlignProp's derive from them), importable without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from learner.divergence_kinds import DIVERGENCES


class ROCMSettings(BaseModel):
    """ROCM hyperparameters. Defaults follow the paper's SD1.5 runs where it states them (AdamW, batch size 1
    per GPU, gradient accumulation 1, λ chosen so the divergence term is about 10× smaller than the reward);
    the values it does not state (learning rate, weight decay, grad-norm clip, λ's controller) are ours.
    """

    model_config = ConfigDict(extra="forbid")

    divergence: Literal[DIVERGENCES] = Field("kl", description="per-step f-divergence D against the frozen base model")
    lam: float | Literal["auto"] = Field(
        0.1,
        description="λ, weight of Σ_k D_k: a number >= 0 (fixed; 0 = unregularized) or auto (λ adapts so that mean Σ_k "
        "D_k ≈ lam_target)",
    )
    lam_target: float = Field(
        0.1,
        gt=0,
        description="auto: divergence budget δ, the mean Σ_k D_k per chain λ steers to (docs/rocm_lambda.md; ours)",
    )
    lam_init: float = Field(0.1, gt=0, description="auto: λ of the first epoch (ours)")
    lam_max_factor: float = Field(1.5, ge=1, description="auto: λ changes by at most this factor per epoch (ours)")
    lam_min: float = Field(1e-4, gt=0, description="auto: λ never goes below this (ours)")
    lam_max: float = Field(1e3, gt=0, description="auto: λ never goes above this (ours)")
    truncate_steps: int | None = Field(
        None,
        ge=1,
        description="opt-in: backprop through the last K transitions + decode only (states before are detached); "
        "None = full",
    )
    js_samples: int = Field(1, ge=1, description="reparameterized draws per dimension for the Jensen–Shannon estimate")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the LoRA (our choice)")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-4, ge=0, description="our choice, as PPO's")
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0, description="grad-norm clip before each optimizer step (our choice)")
    batch_size: int = Field(1, ge=1, description="prompts per objective call per learner (paper: 1 per GPU)")
    grad_accum_steps: int = Field(1, ge=1, description="objective calls per optimizer step (paper: 1)")
    updates_per_epoch: int = Field(1, ge=1, description="optimizer steps per epoch")
    gradient_checkpointing: bool = Field(
        True, description="recompute each UNet call and the decode in backward (saves memory)"
    )

    @field_validator("lam")
    @classmethod
    def _lam_non_negative(cls, value):
        if value != "auto" and value < 0:
            raise ValueError("lam must be auto or a number >= 0")
        return value

    @model_validator(mode="after")
    def _lam_range(self):
        if self.lam == "auto" and not self.lam_min <= self.lam_init <= self.lam_max:
            raise ValueError(
                f"rocm.lam: auto needs lam_min <= lam_init <= lam_max, got {self.lam_min}, {self.lam_init}, "
                f"{self.lam_max}"
            )
        return self
