"""The learner role: per-prompt advantages, clipped PPO on the UNet's LoRA, versioned adapters, state for resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rollout.lora import AdapterVersion, LoraSettings, add_lora, export_adapter, import_adapter, save_lora
from learner.ppo import PPOSettings, TrainBatch, build_lr_scheduler, build_optimizer, ppo_update
from learner.stat_tracker import PerPromptStatTracker
from rollout.models import load_pipeline
from rollout.policy import Trajectory, guidance_embedding


@dataclass
class LearnerSpec:
    """Everything a learner needs to build itself: typed settings, no strings to parse."""

    model: str
    lora: LoraSettings
    ppo: PPOSettings
    stat_buffer_size: int
    stat_min_count: int
    seed: int = 0
    model_seed: int = 0
    device: str | None = None
    dtype: torch.dtype | None = None
    total_optimizer_steps: int = 1  # over the whole run, for `ppo.lr_schedule: linear`
    nan_loss_versions: tuple[int, ...] = ()  # fault injection: updates from these versions get NaN advantages


class PPOLearner:
    """Holds the policy's LoRA, its optimizer and the stat tracker; `train` turns trajectories into version v+1."""

    def __init__(self, spec: LearnerSpec, reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None):
        self.spec = spec
        self.pipe = load_pipeline(spec.model, device=spec.device, dtype=spec.dtype, seed=spec.model_seed)
        torch.manual_seed(spec.seed)
        self.params = add_lora(self.pipe.unet, spec.lora)
        self.optimizer = build_optimizer(self.params, spec.ppo)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, spec.ppo.lr_schedule, spec.total_optimizer_steps)
        self.tracker = PerPromptStatTracker(spec.stat_buffer_size, spec.stat_min_count)
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.reduce_gradients = reduce_gradients
        self.version = 0

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def adapter(self) -> AdapterVersion:
        return export_adapter(self.pipe.unet, self.version)

    def advantages(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        return self.tracker.update(prompts, rewards)

    def train(self, trajectory: Trajectory, advantages: np.ndarray) -> dict[str, float]:
        """One PPO update on a batch whose advantages are already computed; bumps the version."""
        trajectory = trajectory.to(self.device)
        batch = TrainBatch(
            prompt_embeds=trajectory.prompt_embeds,
            timesteps=trajectory.timesteps,
            latents=trajectory.latents,
            old_log_probs=trajectory.log_probs,
            advantages=torch.as_tensor(advantages, dtype=torch.float32, device=self.device),
            w_embedding=guidance_embedding(self.pipe, trajectory.guidance_scale, len(trajectory)).to(self.device),
        )
        metrics = ppo_update(
            self.pipe.unet, self.pipe.scheduler, self.optimizer, self.params, batch, self.spec.ppo, self.generator,
            self.reduce_gradients, self.lr_scheduler,
        )
        metrics.update({f"stat_tracker_{k}": v for k, v in self.tracker.stats().items()})
        self.version += 1
        return metrics

    def save_lora(self, directory: str | Path) -> Path:
        return save_lora(directory, self.pipe.unet, self.spec.lora)

    def state_dict(self) -> dict:
        return {
            "adapter": self.adapter().state_dict,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "generator": self.generator.get_state(),
            "version": self.version,
        }

    def load_state_dict(self, state: dict) -> None:
        import_adapter(self.pipe.unet, AdapterVersion(state["version"], state["adapter"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.tracker.load_state_dict(state["tracker"])
        self.generator.set_state(state["generator"])
        self.version = state["version"]
