"""`RolloutActor`: a thin Ray shell around `RolloutWorker` that also returns images for scoring."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from rollout.lora import AdapterVersion
from rollout.policy import Trajectory
from rollout.worker import RolloutSpec, RolloutWorker


class RolloutRunner:
    """Samples batches; the images come back as a second object so scoring needs no latents."""

    def __init__(self, spec: RolloutSpec, torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.worker = RolloutWorker(spec)
        self.batches = 0
        self.images = 0
        self.busy_s = 0.0

    def set_adapter(self, adapter: AdapterVersion) -> int:
        self.worker.set_adapter(adapter)
        return self.worker.version

    @ray.method(num_returns=2)
    def sample(self, prompts: list[str], seed: int) -> tuple[Trajectory, np.ndarray]:
        start = time.perf_counter()
        trajectory = self.worker.sample(prompts, seed)
        self.busy_s += time.perf_counter() - start
        self.batches += 1
        self.images += len(prompts)
        return trajectory, trajectory.images.permute(0, 2, 3, 1).contiguous().numpy()

    def stats(self) -> dict[str, float]:
        return {"batches": self.batches, "images": self.images, "busy_s": self.busy_s, "version": self.worker.version}


RolloutActor = ray.remote(RolloutRunner)
