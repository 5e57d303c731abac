"""The rollout role: a pipeline (LCM or DDIM, see rollout.policies) with the current LoRA, sampling on request."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.lora import AdapterVersion, LoraSettings, add_lora, import_adapter
from rollout.models import load_pipeline
from rollout.policies import sample_trajectory
from rollout.speed import enable_tf32, speed_up
from rollout.trajectory import Trajectory


@dataclass
class RolloutSpec:
    """How a rollout worker builds its pipeline and samples."""

    model: str
    lora: LoraSettings
    num_steps: int
    guidance_scale: float
    height: int | None = None
    width: int | None = None
    original_inference_steps: int = 50
    model_seed: int = 0
    device: str | None = None
    dtype: torch.dtype | None = None
    noise_group_size: int = 1  # consecutive samples sharing x_0 (GRPO's same-noise groups)
    eta: float | None = None  # η of a DDIM sampler (DDPO); LCM sampling has none
    compile: bool = False  # model.compile: each UNet block compiled (`rollout.speed`)
    channels_last: bool = False  # model.channels_last


class RolloutWorker:
    """Samples batches with the newest adapter it was given (the learner owns the weights)."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.pipe = load_pipeline(spec.model, device=spec.device, dtype=spec.dtype, seed=spec.model_seed)
        add_lora(self.pipe.unet, spec.lora)
        self.pipe.unet.requires_grad_(False)
        enable_tf32()
        speed_up(self.pipe.unet, spec.compile, spec.channels_last)
        self.version = -1

    def set_adapter(self, adapter: AdapterVersion) -> bool:
        """Load `adapter` unless this version is already loaded; True if weights changed."""
        if adapter.version == self.version:
            return False
        import_adapter(self.pipe.unet, adapter)
        self.version = adapter.version
        return True

    def sample(self, prompts: list[str], seed: int) -> Trajectory:
        """One batch of trajectories; the noise is a pure function of `seed`, so a resubmitted batch is identical."""
        generator = torch.Generator(device=self.pipe.unet.device).manual_seed(seed)
        return sample_trajectory(
            self.pipe,
            prompts,
            num_steps=self.spec.num_steps,
            guidance_scale=self.spec.guidance_scale,
            generator=generator,
            height=self.spec.height,
            width=self.spec.width,
            policy_version=self.version,
            original_inference_steps=self.spec.original_inference_steps,
            noise_group_size=self.spec.noise_group_size,
            eta=self.spec.eta,
        )
