"""Scaling while running: a named controller actor per run that the driver polls for the rollout-actor target.

From any process attached to the cluster: `scale_rollouts(output_dir, n)` (what `rlcm scale` calls).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import ray

NAMESPACE = "rlcm"


def controller_name(output_dir: str | Path) -> str:
    """One controller per run, named after the run's absolute output folder."""
    return "rlcm-controller-" + hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


@ray.remote(num_cpus=0)
class ScaleController:
    def __init__(self, rollout_actors: int):
        self.target = rollout_actors

    def set_rollout_actors(self, n: int) -> int:
        if n < 1:
            raise ValueError("a run needs at least 1 rollout actor")
        self.target = n
        return n

    def rollout_actors(self) -> int:
        return self.target


def start_controller(output_dir: str | Path, rollout_actors: int):
    return ScaleController.options(name=controller_name(output_dir), namespace=NAMESPACE, get_if_exists=True).remote(rollout_actors)


def scale_rollouts(output_dir: str | Path, rollout_actors: int, address: str | None = None) -> int:
    """Ask the run writing to `output_dir` to run `rollout_actors` rollout actors; returns the new target.

    New actors load the current adapter with their first batch; removed ones finish their batches first.
    """
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", namespace=NAMESPACE, log_to_driver=False)
    try:
        handle = ray.get_actor(controller_name(output_dir), namespace=NAMESPACE)
    except ValueError as error:
        raise RuntimeError(f"no running rlcm train writes to {output_dir} on this Ray cluster") from error
    return ray.get(handle.set_rollout_actors.remote(rollout_actors))
