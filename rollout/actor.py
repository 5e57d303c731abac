"""`RolloutActor`: a thin Ray actor around `RolloutWorker`; checks the adapter version before each batch."""

from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from rollout.lora import AdapterVersion
from rollout.speed import UNetMeter
from rollout.trajectory import Trajectory
from rollout.worker import RolloutSpec, RolloutWorker


@ray.remote
class RolloutActor:
    """Samples batches; images and a small info dict come back as separate objects.

    `crash_after_batches` (fault injection) makes the first incarnation exit after that many batches;
    a restarted actor starts without an adapter and pulls the current one with its next batch.
    """

    def __init__(self, spec: RolloutSpec, torch_threads: int | None = None, crash_after_batches: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.worker = RolloutWorker(spec)
        self.meter = UNetMeter(self.worker.pipe.unet)
        restarted = ray.get_runtime_context().was_current_actor_reconstructed if ray.is_initialized() else False
        self.crash_after_batches = None if restarted else crash_after_batches
        self.batches = 0

    def ping(self) -> int:
        return self.worker.version

    def set_adapter(self, adapter: AdapterVersion) -> int:
        self.worker.set_adapter(adapter)
        return self.worker.version

    @ray.method(num_returns=3)
    def sample(self, prompts: list[str], seed: int, version: int, adapter: list) -> tuple[Trajectory, np.ndarray, dict]:
        """One batch with policy `version`; `adapter` = [ObjectRef of it], fetched only if this actor holds another."""
        start = time.perf_counter()
        if version != self.worker.version:
            self.worker.set_adapter(ray.get(adapter[0]))
        if self.crash_after_batches is not None and self.batches >= self.crash_after_batches:
            os._exit(1)
        trajectory = self.worker.sample(prompts, seed)
        self.batches += 1
        info = {
            "policy_version": trajectory.policy_version,
            "busy_s": time.perf_counter() - start,
            "images": len(prompts),
            **self.meter.take(),  # unet_images; on a GPU gpu_memory_peak_gb
        }
        return trajectory, trajectory.images.permute(0, 2, 3, 1).contiguous().numpy(), info
