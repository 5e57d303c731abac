"""The settings of one `rlcm eval` run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class EvalSettings(BaseModel):
    """One evaluation: which models, prompts, seeds, metrics, sampler settings and where to write."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    metrics: list[str] = Field(min_length=1)
    out: Path
    runs: dict[str, Path] = Field(
        default_factory=dict, description="run name -> checkpoint folder with pytorch_lora_weights.safetensors"
    )
    lora: Path | None = Field(None, description="one checkpoint folder, evaluated as the run named 'tuned'")
    trained: dict[str, str] = Field(
        default_factory=dict,
        description="run name -> the metric it trained on (default: reward.name of the run's config.yaml)",
    )
    include_base: bool = Field(True, description="also sample the base model (LoRA off) with the same noise")
    model: str | None = Field(
        None, description="base model; default: the one in the checkpoint's rlcm_model.json, else tiny"
    )
    seeds: int = Field(4, ge=1)
    steps: int | None = Field(
        None, ge=1, description="inference steps; default: the checkpoint's (rlcm_model.json), else 8"
    )
    guidance_scale: float | None = Field(None, description="guidance scale; default: the checkpoint's, else 8.0")
    batch_size: int = Field(8, ge=1)
    grid_columns: int = Field(8, ge=1)
    service_url: str | None = None
    service_token: str | None = None
    device: str | None = None
    steer: list[Literal["best-of-n", "fk"]] = Field(
        default_factory=list, description="steering methods; each model evaluated is also sampled steered by each"
    )
    particles: list[PositiveInt] = Field(
        default_factory=lambda: [4], min_length=1, description="particle counts N to steer with"
    )
    potential: Literal["diff", "max", "current"] = Field("diff", description="FK potential")
    lam: float = Field(1.0, description="FK inverse temperature λ")
    resample_every: int = Field(1, ge=0, description="FK: resample after every K-th step, 0 never")
    steer_reward: str | None = Field(None, description="the reward steered toward (default: the first metric)")
