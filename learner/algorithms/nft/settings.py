"""DiffusionNFT's typed settings, importable without torch (config validation stays fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class NFTSettings(BaseModel):
    """The update's knobs; defaults are the authors' released settings (NVlabs/DiffusionNFT `config/base.py`,
    `config/nft.py`)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(3e-4, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-4, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lr_schedule: Literal["constant", "linear"] = "constant"
    train_batch_size: int = Field(1, ge=1, description="samples per training call")
    grad_accum_steps: int = Field(1, ge=1, description="training calls (× timesteps_per_sample) per optimizer step")
    inner_epochs: int = Field(1, ge=1, description="passes over an epoch's samples")
    beta: float = Field(1.0, gt=0, description="β: p± = p_old ± β·(p_θ − p_old), the implicit policies' step")
    adv_clip_max: float = Field(5.0, gt=0, description="A_max: r = clip(A/A_max, −1, 1)/2 + 1/2")
    timesteps_per_sample: int = Field(
        4, ge=1, description="(t, ε) draws per sample and pass, each one training call's term"
    )
    timestep_min: int = Field(1, ge=0, description="training t ~ U{timestep_min … timestep_max} (model timesteps)")
    timestep_max: int = Field(999, ge=0, le=999)
    adaptive_weighting: bool = Field(
        True, description="divide each sample's squared error by its detached mean |p − x0| (the authors' weighting)"
    )
    kl_coef: float = Field(0.0, ge=0, description="weight of mean ‖p_θ − p_base‖² (LoRA off); the authors use 1e-4")
    eta_max: float = Field(0.5, ge=0, lt=1, description="θ_old ← η·θ_old + (1−η)·θ, η = min(rate·(s − flat), max)")
    eta_rate: float = Field(0.001, ge=0, description="η's growth per optimizer step s")
    eta_flat_steps: int = Field(0, ge=0, description="η = 0 (θ_old = θ after each update) for the first steps")
    ddim_eta: float = Field(1.0, gt=0, description="η of the DDIM sampler (Stable Diffusion models only)")

    @model_validator(mode="after")
    def _timestep_range(self) -> NFTSettings:
        if self.timestep_min > self.timestep_max:
            raise ValueError(f"timestep_min ({self.timestep_min}) must not exceed timestep_max ({self.timestep_max})")
        return self
