"""`Learner`: a thin Ray actor around `PPOLearner` (RLCM) or `ROCMLearner` (ROCM): one data-parallel rank."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import numpy as np
import ray
import torch
import torch.distributed as dist

from learner.guards import check_adapter
from learner.learner import LearnerSpec, PPOLearner
from rollout.lora import AdapterVersion
from rollout.policy import Trajectory

STATE_FILE = "learner_state.pt"
RANK_RNG_FILE = "learner_rank{rank}_rng.pt"


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the LoRA gradients of every rank in one flat buffer and divide by the world size."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """The contiguous sample indices of `rank` when n samples are split over `world_size` learners."""
    return list(range(rank * n // world_size, (rank + 1) * n // world_size))


def build_learner(spec, rank: int = 0, reduce_gradients=None):
    """`PPOLearner` for a `LearnerSpec`, `ROCMLearner` (drawing its own noise per rank) for a `ROCMLearnerSpec`."""
    if isinstance(spec, LearnerSpec):
        return PPOLearner(spec, reduce_gradients=reduce_gradients)
    from learner.rocm_learner import ROCMLearner

    return ROCMLearner(dataclasses.replace(spec, rank=rank), reduce_gradients=reduce_gradients)


@ray.remote
class Learner:
    """Rank `rank` of `world_size` data-parallel learners; every rank holds identical weights (and stat tracker)."""

    def __init__(self, spec, torch_threads: int | None = None, rank: int = 0, world_size: int = 1):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.rank, self.world_size = rank, world_size
        self.learner = build_learner(spec, rank, average_gradients if world_size > 1 else None)

    def address(self) -> tuple[str, int]:
        """Host and a free port for the process group's rendezvous (called on rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_group(self, host: str, port: int, backend: str) -> int:
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.world_size)
        return self.rank

    def adapter(self) -> AdapterVersion:
        """The current adapter, for publishing; NonFiniteError instead of an adapter with a NaN/Inf weight."""
        adapter = self.learner.adapter()
        check_adapter(adapter.state_dict, "publish")
        return adapter

    def version(self) -> int:
        return self.learner.version

    def train(self, rewards: np.ndarray, valid: np.ndarray, *trajectories: Trajectory) -> dict[str, float]:
        """Advantages from the valid samples' rewards (all ranks alike), one PPO update on this rank's shard.

        With one learner invalid samples are dropped; with several they stay with advantage 0, so
        every rank takes the same number of optimizer steps.
        """
        start = time.perf_counter()
        batch = Trajectory.concat(list(trajectories))
        valid = np.asarray(valid, dtype=bool)
        keep = np.flatnonzero(valid)
        if len(keep) == 0:
            raise ValueError("no valid reward in this batch; the driver skips such updates")
        advantages = np.zeros(len(batch))
        advantages[keep] = self.learner.advantages([batch.prompts[i] for i in keep], np.asarray(rewards, dtype=np.float64)[keep])
        if self.learner.version in getattr(self.learner.spec, "nan_loss_versions", ()):
            advantages[:] = np.nan  # fault injection (faults.nan_loss_epochs): every loss of this update is NaN
        rows = keep.tolist() if self.world_size == 1 else shard(len(batch), self.rank, self.world_size)
        if len(rows) < len(batch):
            batch, advantages = batch.select(rows), advantages[rows]
        metrics = self.learner.train(batch, advantages)
        metrics["learner_time_s"] = time.perf_counter() - start
        return metrics

    def train_rocm(self, prompts: list[str], lam: float | None = None) -> dict[str, float]:
        """One ROCM epoch on this rank's shard of `prompts` (each rank samples its own chains with grad), at λ = `lam` if given."""
        start = time.perf_counter()
        mine = [prompts[i] for i in shard(len(prompts), self.rank, self.world_size)]
        metrics = self.learner.train(mine, lam)
        metrics["learner_time_s"] = time.perf_counter() - start
        return metrics

    def save(self, directory: str) -> str:
        """Rank 0 writes the LoRA and the shared state; every other rank its own noise generator (ranks differ there)."""
        directory = Path(directory)
        state = self.learner.state_dict()
        check_adapter(state["adapter"], "save")
        if self.rank == 0:
            self.learner.save_lora(directory)
            torch.save(state, directory / STATE_FILE)
        else:
            torch.save({"generator": state["generator"]}, directory / RANK_RNG_FILE.format(rank=self.rank))
        return str(directory)

    def load(self, directory: str) -> int:
        state = torch.load(Path(directory) / STATE_FILE, weights_only=True)
        own = Path(directory) / RANK_RNG_FILE.format(rank=self.rank)
        if self.rank > 0 and own.is_file():
            state["generator"] = torch.load(own, weights_only=True)["generator"]
        self.learner.load_state_dict(state)
        return self.learner.version
