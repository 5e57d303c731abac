"""Scaling while running: a named controller actor per run that the driver polls for the rollout-actor target.

From any process that can reach the run's cluster: `scale_rollouts(output_dir, n, address)` (what `rlcm scale` calls).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import ray

from cluster.ray_setup import Capacity, ResourceRequest, init_ray, preflight

NAMESPACE = "rlcm"


def controller_name(output_dir: str | Path) -> str:
    """One controller per run, named after the run's absolute output folder."""
    return "rlcm-controller-" + hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class ScaleController:
    """The rollout-actor target; with `per_actor` and `capacity`, a target that cannot fit is refused
    (ResourceError)."""

    def __init__(
        self,
        rollout_actors: int,
        per_actor: ResourceRequest | None = None,
        fixed: tuple[ResourceRequest, ...] = (),
        capacity: Capacity | None = None,
    ):
        self.target = rollout_actors
        self.per_actor, self.fixed, self.capacity = per_actor, fixed, capacity

    def set_rollout_actors(self, n: int) -> int:
        if n < 1:
            raise ValueError("a run needs at least 1 rollout actor")
        if self.per_actor is not None and self.capacity is not None:
            preflight([dataclasses.replace(self.per_actor, count=n), *self.fixed], self.capacity)
        self.target = n
        return n

    def rollout_actors(self) -> int:
        return self.target


def start_controller(
    output_dir: str | Path,
    rollout_actors: int,
    per_actor: ResourceRequest | None = None,
    fixed: tuple[ResourceRequest, ...] = (),
    capacity: Capacity | None = None,
):
    """The run's controller. per_actor: one rollout actor's request; fixed: the rest of the run (learners, reward
    tasks).

    It lives on the driver's node: a worker node that disappears must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ScaleController.options(
        name=controller_name(output_dir), namespace=NAMESPACE, get_if_exists=True, scheduling_strategy=here
    ).remote(rollout_actors, per_actor, tuple(fixed), capacity)


def scale_rollouts(output_dir: str | Path, rollout_actors: int, address: str | None = None) -> int:
    """Ask the run writing to `output_dir` to run `rollout_actors` rollout actors; returns the new target.

    address: the run's cluster (host:port, or "auto" for the one on this machine); default RAY_ADDRESS.
    New actors load the current adapter with their first batch; removed ones finish their batches first.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ValueError(
                "rlcm scale needs the run's Ray cluster: pass --address HOST:PORT (printed by `rlcm train` at start; "
                "`auto` picks the cluster on this machine) or set RAY_ADDRESS"
            )
        init_ray(address, namespace=NAMESPACE, log_to_driver=False)
    try:
        handle = ray.get_actor(controller_name(output_dir), namespace=NAMESPACE)
    except ValueError as error:
        raise RuntimeError(f"no running rlcm train writes to {output_dir} on this Ray cluster") from error
    return ray.get(handle.set_rollout_actors.remote(rollout_actors))
