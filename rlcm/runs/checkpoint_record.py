"""`rlcm_model.json` of a checkpoint: the base model and the sampling settings it was trained with.

`rlcm eval` and `rlcm sample` read it, so a 4-step ROCM checkpoint is sampled with 4 steps unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RECORD = "rlcm_model.json"


class SamplingRecord(BaseModel):
    """How the images a checkpoint was trained on were sampled (height/width None: the model's default)."""

    model_config = ConfigDict(extra="ignore")
    num_steps: int = Field(8, ge=1)
    guidance_scale: float = 8.0
    original_inference_steps: int = Field(50, ge=1)
    height: int | None = None
    width: int | None = None
    eta: float | None = Field(None, description="η of a DDIM sampler (DDPO); None for LCM")

    def sampler_options(self) -> dict:
        """The keyword arguments of `pipe(...)` that depend on the sampler: LCM's original steps, DDIM's η when
        recorded."""
        return {
            "original_inference_steps": self.original_inference_steps,
            **({"eta": self.eta} if self.eta is not None else {}),
        }


DEFAULTS = SamplingRecord()
"""What a checkpoint without a record (written before sampling settings were recorded) is sampled with."""


def checkpoint_record(config: Any) -> dict:
    """The record of a checkpoint trained with `config` (a TrainConfig)."""
    sampling = config.sampling
    return {
        "model": config.model.name,
        "model_seed": config.model.seed,
        "sampling": SamplingRecord(
            num_steps=sampling.num_steps,
            guidance_scale=sampling.guidance_scale,
            original_inference_steps=sampling.original_inference_steps,
            height=sampling.height,
            width=sampling.width,
            eta=config.algo.eta(config),
        ).model_dump(),
    }


def write_record(directory: Path, config: Any) -> None:
    (Path(directory) / RECORD).write_text(json.dumps(checkpoint_record(config), indent=1, sort_keys=True))


def read_record(lora: Path | None) -> dict:
    """The record of checkpoint folder `lora` ({} if there is none), checking the LoRA file is there."""
    if lora is None:
        return {}
    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        raise FileNotFoundError(
            f"{lora} holds no pytorch_lora_weights.safetensors; pass a checkpoints/epoch-NNNN folder"
        )
    path = lora / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def sampling_settings(record: dict, steps: int | None, guidance_scale: float | None) -> tuple[SamplingRecord, str]:
    """The sampling settings to use (command-line values win over the record, the record over the defaults)
    and one line that says where each came from."""
    recorded = SamplingRecord.model_validate(record["sampling"]) if "sampling" in record else None
    base = recorded or DEFAULTS
    chosen = base.model_copy(
        update={k: v for k, v in (("num_steps", steps), ("guidance_scale", guidance_scale)) if v is not None}
    )
    size = f"{chosen.height}x{chosen.width}" if chosen.height and chosen.width else "the model's default size"
    origin = "the checkpoint's " + RECORD if recorded else "defaults (no sampling settings recorded)"
    overridden = [
        name for name, value in (("--steps", steps), ("--guidance-scale", guidance_scale)) if value is not None
    ]
    line = f"{chosen.num_steps} steps, guidance {chosen.guidance_scale:g}, {size}: from {origin}" + (
        f", except {' and '.join(overridden)} as given" if overridden else ""
    )
    return chosen, line
