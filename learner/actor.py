"""`Learner`: a thin Ray actor around an algorithm's learner (a `BaseLearner` subclass): one data-parallel rank."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import ray
import torch
import torch.distributed as dist

from learner.guards import check_adapter
from rollout.lora import AdapterVersion
from rollout.speed import UNetMeter

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


def build_learner(spec, rank: int = 0, reduce_gradients=None):
    """The algorithm's learner for `spec` (every spec knows its learner class), as data-parallel rank `rank`."""
    return dataclasses.replace(spec, rank=rank).build(reduce_gradients)


@ray.remote
class Learner:
    """Rank `rank` of `world_size` data-parallel learners; every rank holds identical weights (and stat tracker)."""

    def __init__(self, spec, torch_threads: int | None = None, rank: int = 0, world_size: int = 1):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.rank, self.world_size = rank, world_size
        self.learner = build_learner(spec, rank, average_gradients if world_size > 1 else None)
        self.meter = UNetMeter(self.learner.pipe.unet)

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

    def train(self, *inputs) -> dict[str, float]:
        """One epoch's update on this rank from what the algorithm's sample source delivers (ObjectRefs resolved by
        Ray)."""
        start = time.perf_counter()
        self.meter.take()  # what ran between updates (checkpoint loads, evaluation) is not this update's
        metrics = self.learner.train_epoch(*inputs, world_size=self.world_size)
        metrics["learner_time_s"] = time.perf_counter() - start
        # learner_unet_images; on a GPU learner_gpu_memory_peak_gb (this rank's peak)
        return {**metrics, **{f"learner_{key}": value for key, value in self.meter.take().items()}}

    def save(self, directory: str) -> str:
        """Rank 0 writes the LoRA and the shared state; every other rank its own noise generator (ranks differ
        there)."""
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
