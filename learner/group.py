"""`LearnerGroup`: M data-parallel `Learner` actors (torch.distributed, gloo on CPU / NCCL on GPU); rank 0 publishes."""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learner.actor import Learner


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    """A placement-group bundle; empty when the actor asks for no resources."""
    return {k: v for k, v in {"CPU": cpus, "GPU": gpus}.items() if v > 0}


class LearnerGroup:
    """Creates M learners in one placement group, joins them into a process group, trains them in lockstep."""

    def __init__(
        self,
        spec,
        num_learners: int,
        cpus: float,
        gpus: float,
        torch_threads: int | None = None,
        backend: str = "auto",
        strategy: str = "PACK",
        wait_placed: Callable | None = None,
    ):
        """`spec`: an algorithm's learner spec (it builds the learner); `wait_placed(pg)` waits for the placement group
        (default: forever); the driver passes one with a time limit."""
        resources = bundle(cpus, gpus)
        self.pg = placement_group([resources] * num_learners, strategy=strategy) if resources else None
        if self.pg is not None:
            (wait_placed or (lambda pg: ray.get(pg.ready())))(self.pg)
        self.actors = [
            Learner.options(
                num_cpus=cpus,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
                if self.pg
                else None,
            ).remote(spec, torch_threads, rank, num_learners)
            for rank in range(num_learners)
        ]
        if num_learners > 1:
            host, port = ray.get(self.actors[0].address.remote())
            backend = ("nccl" if gpus > 0 else "gloo") if backend == "auto" else backend
            ray.get([actor.init_group.remote(host, port, backend) for actor in self.actors])

    @property
    def rank0(self):
        return self.actors[0]

    def train(self, *inputs) -> list:
        """Start one epoch's update on every rank with the algorithm's inputs; returns the ranks' metric refs (rank 0
        first)."""
        return [actor.train.remote(*inputs) for actor in self.actors]

    def adapter(self) -> ray.ObjectRef:
        return self.rank0.adapter.remote()

    def save(self, directory: str) -> None:
        ray.get([actor.save.remote(directory) for actor in self.actors])

    def load(self, directory: str) -> None:
        ray.get([actor.load.remote(directory) for actor in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        if self.pg is not None:
            remove_placement_group(self.pg)
