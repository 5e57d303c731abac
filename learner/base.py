"""`BaseLearner`: what every algorithm's learner shares (RLlib style: one base, one subclass per algorithm).

The pipeline with a LoRA on its UNet (base weights frozen, adapter fp32), AdamW on the adapter and an
optional learning-rate schedule, a noise generator per rank, the versioned adapter, resume state (tensors and plain
types: `torch.load(weights_only=True)`) and the diffusers-format LoRA save. A subclass sets `settings`, and
implements `train_epoch`; its spec subclasses `BaseLearnerSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from learner.optim import ReduceGradients, build_lr_scheduler, build_optimizer
from rollout.lora import AdapterVersion, LoraSettings, add_lora, export_adapter, import_adapter, save_lora
from rollout.models import load_pipeline
from rollout.speed import enable_tf32, speed_up


@dataclass(kw_only=True)
class BaseLearnerSpec:
    """What every learner's spec carries (keyword-only); an algorithm's spec adds its settings and `build`."""

    model: str
    lora: LoraSettings
    seed: int = 0
    model_seed: int = 0
    device: str | None = None
    dtype: torch.dtype | None = None
    total_optimizer_steps: int = 1  # over the whole run, for a `linear` lr_schedule
    rank: int = 0
    compile: bool = False  # model.compile: each UNet block compiled (`rollout.speed`)
    channels_last: bool = False  # model.channels_last

    def build(self, reduce_gradients: ReduceGradients | None = None) -> BaseLearner:
        raise NotImplementedError  # the algorithm's spec builds its learner


class BaseLearner:
    """One data-parallel rank's policy: `train_epoch(...)` turns adapter version v into v+1.

    Every rank starts from the same LoRA (torch seeded with `spec.seed` before `add_lora`); `generator`
    is seeded by `generator_seed()` (default: `seed` alone, on the CPU, so every rank shuffles alike).
    """

    def __init__(self, spec: BaseLearnerSpec, reduce_gradients: ReduceGradients | None = None):
        self.spec = spec
        self.pipe = load_pipeline(spec.model, device=spec.device, dtype=spec.dtype, seed=spec.model_seed)
        torch.manual_seed(spec.seed)
        self.params = add_lora(self.pipe.unet, spec.lora)
        enable_tf32()
        speed_up(self.pipe.unet, spec.compile, spec.channels_last)
        self.optimizer = build_optimizer(self.params, self.settings)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, self.lr_schedule, self.total_optimizer_steps)
        self.generator = torch.Generator(device=self.generator_device).manual_seed(self.generator_seed())
        self.reduce_gradients = reduce_gradients
        self.version = 0

    # ---- what a subclass declares ---------------------------------------------
    @property
    def settings(self):
        """The algorithm's settings section (learning rate, Adam, max_grad_norm, ...)."""
        raise NotImplementedError

    @property
    def lr_schedule(self) -> str:
        return self.settings.lr_schedule

    @property
    def total_optimizer_steps(self) -> int:
        return self.spec.total_optimizer_steps

    def train_epoch(self, *inputs, world_size: int = 1) -> dict[str, float]:
        """One epoch's update from what the algorithm's sample source delivers; bumps the version."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """The subclass's own resume state (tensors and plain types)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---- shared ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def generator_device(self) -> torch.device | str:
        return "cpu"

    def generator_seed(self) -> int:
        return self.spec.seed

    def adapter(self) -> AdapterVersion:
        return export_adapter(self.pipe.unet, self.version)

    def save_lora(self, directory: str | Path) -> Path:
        return save_lora(directory, self.pipe.unet, self.spec.lora)

    def state_dict(self) -> dict:
        return {
            "adapter": self.adapter().state_dict,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "generator": self.generator.get_state(),  # uint8 tensor
            "version": self.version,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        import_adapter(self.pipe.unet, AdapterVersion(state["version"], state["adapter"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])
        self.version = state["version"]
        self.load_extra_state(state)


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """The contiguous sample indices of `rank` when n samples are split over `world_size` learners."""
    return list(range(rank * n // world_size, (rank + 1) * n // world_size))
