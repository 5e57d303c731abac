"""The ROCM learner role: samples its own chains with grad, ascends reward − λ·divergence, versioned adapters, resume state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from learner.ppo import build_optimizer
from learner.rocm import rocm_update
from learner.settings import ROCMSettings
from rollout.lora import AdapterVersion, LoraSettings, add_lora, export_adapter, import_adapter, save_lora
from rollout.models import load_pipeline


@dataclass
class ROCMLearnerSpec:
    """Everything a ROCM learner needs; `reward_factory` is a picklable callable built in the learner's process."""

    model: str
    lora: LoraSettings
    rocm: ROCMSettings
    num_steps: int
    guidance_scale: float
    reward_factory: Callable[[], torch.nn.Module]
    height: int | None = None
    width: int | None = None
    original_inference_steps: int = 50
    seed: int = 0
    model_seed: int = 0
    device: str | None = None
    dtype: torch.dtype | None = None
    rank: int = 0


@dataclass
class EpochSamples:
    """The chains one `train` call sampled with grad, detached (for logging and sample grids)."""

    prompts: list[str]
    rewards: np.ndarray  # [N]
    images: torch.Tensor  # uint8 [N, 3, H, W]


class ROCMLearner:
    """Holds the LoRA, its AdamW optimizer and the noise generator; `train(prompts)` turns version v into v+1.

    Every rank starts from the same LoRA (torch seeded with `seed` before `add_lora`); the noise comes
    from a generator seeded with (seed, rank), so data-parallel ranks draw different chains.
    """

    def __init__(self, spec: ROCMLearnerSpec, reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None):
        self.spec = spec
        self.pipe = load_pipeline(spec.model, device=spec.device, dtype=spec.dtype, seed=spec.model_seed)
        torch.manual_seed(spec.seed)
        self.params = add_lora(self.pipe.unet, spec.lora)
        self.optimizer = build_optimizer(self.params, spec.rocm)
        noise_seed = int(np.random.default_rng([spec.seed, spec.rank]).integers(0, 2**62))
        self.generator = torch.Generator(device=self.device).manual_seed(noise_seed)
        self.reward_fn = spec.reward_factory().to(self.device)
        self.reduce_gradients = reduce_gradients
        self.version = 0
        self.last_samples: EpochSamples | None = None

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def prompts_per_epoch(self) -> int:
        r = self.spec.rocm
        return r.batch_size * r.grad_accum_steps * r.updates_per_epoch

    def adapter(self) -> AdapterVersion:
        return export_adapter(self.pipe.unet, self.version)

    def train(self, prompts: list[str], lam: float | None = None) -> dict[str, float]:
        """One epoch: `updates_per_epoch` AdamW steps, each over `grad_accum_steps` calls of `batch_size` prompts, in order.

        `lam` overrides `rocm.lam` for this epoch (the driver's λ controller when `rocm.lam` is auto).
        """
        r = self.spec.rocm
        if lam is not None:
            r = r.model_copy(update={"lam": float(lam)})
        elif r.lam == "auto":
            raise ValueError("rocm.lam is auto: pass this epoch's λ (the driver's controller holds it)")
        if len(prompts) != self.prompts_per_epoch:
            raise ValueError(
                f"ROCM epoch needs batch_size x grad_accum_steps x updates_per_epoch = {r.batch_size} x {r.grad_accum_steps} x "
                f"{r.updates_per_epoch} = {self.prompts_per_epoch} prompts per learner, got {len(prompts)}"
            )
        batches = [list(prompts[i : i + r.batch_size]) for i in range(0, len(prompts), r.batch_size)]
        recorded: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
        self.pipe.unet.train()
        try:
            metrics = rocm_update(
                self.pipe,
                self.optimizer,
                self.params,
                batches,
                r,
                self.spec.num_steps,
                self.spec.guidance_scale,
                self.generator,
                self.reward_fn,
                height=self.spec.height,
                width=self.spec.width,
                original_inference_steps=self.spec.original_inference_steps,
                reduce_gradients=self.reduce_gradients,
                record_samples=lambda p, rewards, images: recorded.append((p, rewards, images)),
            )
        finally:
            self.pipe.unet.eval()
        self.last_samples = EpochSamples(
            prompts=[p for batch, _, _ in recorded for p in batch],
            rewards=torch.cat([rewards for _, rewards, _ in recorded]).numpy(),
            images=torch.cat([images for _, _, images in recorded]),
        )
        self.version += 1
        metrics["lam"] = float(r.lam)
        return metrics

    def save_lora(self, directory: str | Path) -> Path:
        return save_lora(directory, self.pipe.unet, self.spec.lora)

    def state_dict(self) -> dict:
        """Adapter, optimizer, noise generator and version: tensors and plain types only (`torch.load(weights_only=True)`)."""
        return {
            "adapter": self.adapter().state_dict,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),  # uint8 tensor
            "version": self.version,
        }

    def load_state_dict(self, state: dict) -> None:
        import_adapter(self.pipe.unet, AdapterVersion(state["version"], state["adapter"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.version = state["version"]
