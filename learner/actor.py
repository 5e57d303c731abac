"""`Learner`: a thin Ray shell around `PPOLearner`: advantages, PPO, adapter versions, checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import ray
import torch

from learner.learner import LearnerSpec, PPOLearner
from rollout.lora import AdapterVersion
from rollout.policy import Trajectory

STATE_FILE = "learner_state.pt"


class LearnerRunner:
    def __init__(self, spec: LearnerSpec, torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.learner = PPOLearner(spec)

    def adapter(self) -> AdapterVersion:
        return self.learner.adapter()

    def version(self) -> int:
        return self.learner.version

    def train(self, rewards: np.ndarray, valid: np.ndarray, *trajectories: Trajectory) -> dict[str, float]:
        """Advantages from the valid samples' rewards, one PPO update on them; returns diagnostics."""
        start = time.perf_counter()
        batch = Trajectory.concat(list(trajectories))
        keep = np.flatnonzero(valid)
        if len(keep) < len(batch):
            batch = batch.select(keep.tolist())
        prompts = batch.prompts
        advantages = self.learner.advantages(prompts, np.asarray(rewards, dtype=np.float64)[keep])
        metrics = self.learner.train(batch, advantages)
        metrics["learner_time_s"] = time.perf_counter() - start
        return metrics

    def save(self, directory: str) -> str:
        directory = Path(directory)
        self.learner.save_lora(directory)
        torch.save(self.learner.state_dict(), directory / STATE_FILE)
        return str(directory)

    def load(self, directory: str) -> int:
        self.learner.load_state_dict(torch.load(Path(directory) / STATE_FILE, weights_only=False))
        return self.learner.version


Learner = ray.remote(LearnerRunner)
