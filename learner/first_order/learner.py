"""The first-order learner (ROCM's, DRaFT's, AlignProp's): samples its own chains with grad and ascends the
algorithm's objective (`objective`, per call) with the algorithm's truncation K (`truncate_steps`, per call)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from learner.base import BaseLearner, BaseLearnerSpec, shard
from learner.first_order.update import Objective, first_order_update

if TYPE_CHECKING:
    from learner.algorithms.rocm.settings import ROCMSettings


@dataclass(kw_only=True)
class FirstOrderLearnerSpec(BaseLearnerSpec):
    """Everything a first-order learner needs; `reward_factory` is a picklable callable built in the learner's process;
    `rocm`: ROCM's settings or a subclass (DRaFT's, AlignProp's)."""

    rocm: ROCMSettings
    num_steps: int
    guidance_scale: float
    reward_factory: Callable[[], torch.nn.Module]
    height: int | None = None
    width: int | None = None
    original_inference_steps: int = 50


@dataclass
class EpochSamples:
    """The chains one `train` call sampled with grad, detached (for logging and sample grids)."""

    prompts: list[str]
    rewards: np.ndarray  # [N]
    images: torch.Tensor  # uint8 [N, 3, H, W]


class FirstOrderLearner(BaseLearner):
    """Samples its own chains with grad and ascends `objective`; `train(prompts)` turns version v into v+1.

    The noise comes from the base's per-rank generator (seeded with (seed, rank)), so data-parallel ranks
    draw different chains.
    """

    objective: Objective  # what each call ascends (`learner.first_order.update.Objective`): the algorithm's
    lr_schedule = "constant"  # ROCM's settings have no schedule

    def __init__(
        self, spec: FirstOrderLearnerSpec, reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None
    ):
        super().__init__(spec, reduce_gradients)
        self.reward_fn = spec.reward_factory().to(self.device)
        self.last_samples: EpochSamples | None = None

    @property
    def settings(self) -> ROCMSettings:
        return self.spec.rocm

    @property
    def generator_device(self) -> torch.device:
        return self.device

    def generator_seed(self) -> int:
        return int(np.random.default_rng([self.spec.seed, self.rank]).integers(0, 2**62))

    @property
    def prompts_per_epoch(self) -> int:
        r = self.settings
        return r.batch_size * r.grad_accum_steps * r.updates_per_epoch

    def truncate_steps(self) -> int | None:
        """K of the next objective call (gradient through the last K transitions); None = the full chain."""
        return self.settings.truncate_steps

    def train_epoch(self, prompts: list[str], lam: float | None = None, world_size: int = 1) -> dict[str, float]:
        """One epoch on this rank's shard of `prompts` (each rank samples its own chains with grad), at λ = `lam` if
        given."""
        return self.train([prompts[i] for i in shard(len(prompts), self.rank, world_size)], lam)

    def train(self, prompts: list[str], lam: float | None = None) -> dict[str, float]:
        """One epoch: `updates_per_epoch` AdamW steps, each over `grad_accum_steps` calls of `batch_size` prompts, in
        order.

        `lam` overrides `rocm.lam` for this epoch (the driver's λ controller when `rocm.lam` is auto).
        """
        r = self.settings
        if lam is not None:
            r = r.model_copy(update={"lam": float(lam)})
        elif r.lam == "auto":
            raise ValueError("rocm.lam is auto: pass this epoch's λ (the driver's controller holds it)")
        if len(prompts) != self.prompts_per_epoch:
            raise ValueError(
                f"ROCM epoch needs batch_size x grad_accum_steps x updates_per_epoch = {r.batch_size} x "
                f"{r.grad_accum_steps} x {r.updates_per_epoch} = {self.prompts_per_epoch} prompts per learner, got "
                f"{len(prompts)}"
            )
        batches = [list(prompts[i : i + r.batch_size]) for i in range(0, len(prompts), r.batch_size)]
        recorded: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
        self.pipe.unet.train()
        try:
            metrics = first_order_update(
                self.pipe,
                self.optimizer,
                self.params,
                batches,
                r,
                self.spec.num_steps,
                self.spec.guidance_scale,
                self.generator,
                self.reward_fn,
                self.objective,
                height=self.spec.height,
                width=self.spec.width,
                original_inference_steps=self.spec.original_inference_steps,
                reduce_gradients=self.reduce_gradients,
                record_samples=lambda p, rewards, images: recorded.append((p, rewards, images)),
                truncation=self.truncate_steps,
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
