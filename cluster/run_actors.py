"""What a run asks Ray for: its resource requests, its learner group and its rollout pool."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import ray

from cluster.epoch_record import FlopModel
from cluster.ray_setup import ResourceRequest, wait_for_placement_group
from cluster.rollout_pool import PoolOptions, RolloutPool
from learner.group import LearnerGroup
from rlcm.config.schema import TrainConfig
from rlcm.planning.plan import flop_model, resolve_auto_pairs
from rlcm.runs.judgements import JudgementStore
from rollout.precision import DTYPES
from rollout.worker import RolloutSpec


def resource_requests(config: TrainConfig) -> list[ResourceRequest]:
    """What the run asks Ray for, with the config keys that ask for it."""
    r = config.resources
    return [
        ResourceRequest(
            "rollout actors",
            r.num_rollout_actors,
            r.rollout_cpus,
            r.rollout_gpus,
            ("resources.num_rollout_actors", "resources.rollout_cpus", "resources.rollout_gpus"),
        ),
        ResourceRequest(
            "learners",
            r.num_learners,
            r.learner_cpus,
            r.learner_gpus,
            ("resources.num_learners", "resources.learner_cpus", "resources.learner_gpus"),
            config.scaleout.placement_strategy,
        ),
        ResourceRequest("reward scoring", 1, config.reward.num_cpus, 0.0, ("reward.num_cpus",)),
    ]


def gpu_kind() -> str | None:
    """The cluster's GPU kind as Ray detected it (its `accelerator_type:<name>` resource), None without one; with
    several kinds, the first in name order."""
    kinds = sorted(key.split(":", 1)[1] for key in ray.cluster_resources() if key.startswith("accelerator_type:"))
    return kinds[0] if kinds else None


def run_flop_model(config: TrainConfig) -> FlopModel | None:
    """What the plan says the run's trained samples cost on the cluster's GPU kind (None: CPU, toy, unknown GPU)."""
    uses_gpus = config.resources.learner_gpus or config.resources.rollout_gpus
    found = flop_model(config, gpu_kind()) if uses_gpus else None
    return FlopModel(*found) if found else None


def learner_spec(config: TrainConfig, seed: int | None = None):
    """The algorithm's learner spec for this config (`seed`: the learners' seed, `run.seed` unless given)."""
    common = dict(
        model=config.model.name,
        lora=config.model.lora,
        seed=config.run.seed if seed is None else seed,
        model_seed=config.model.seed,
        dtype=DTYPES[config.model.dtype],
        compile=config.model.compile,
        channels_last=config.model.channels_last,
    )
    return config.algo.learner_spec(config, common)


def rollout_spec(config: TrainConfig, noise_group_size: int | None = None) -> RolloutSpec:
    """The rollout actors' sampler for this config (`noise_group_size`: the algorithm's unless given)."""
    s = config.sampling
    return RolloutSpec(
        model=config.model.name,
        lora=config.model.lora,
        num_steps=s.num_steps,
        guidance_scale=s.guidance_scale,
        height=s.height,
        width=s.width,
        original_inference_steps=s.original_inference_steps,
        model_seed=config.model.seed,
        dtype=DTYPES[config.model.dtype],
        noise_group_size=config.algo.noise_group_size(config) if noise_group_size is None else noise_group_size,
        eta=config.algo.eta(config),
        compile=config.model.compile,
        channels_last=config.model.channels_last,
    )


def learner_group(config: TrainConfig, run_dir: Path | None = None) -> LearnerGroup:
    """The run's learners, as the algorithm declares them, placed as `scaleout` says (`pairs_per_call: auto`
    resolved for the cluster's GPU kind, `rlcm.planning.plan.resolve_auto_pairs`); where people judge the samples,
    they read and write `run_dir`'s judgement store."""
    config, chosen = resolve_auto_pairs(config, gpu_kind() if config.resources.learner_gpus else None)
    if chosen and config.resources.learner_gpus:  # CPU learners: per call, as always
        print(f"rlcm: {chosen}", file=sys.stderr, flush=True)
    resources = config.resources
    spec = learner_spec(config)
    if config.faults.nan_loss_epochs and hasattr(spec, "nan_loss_versions"):
        spec = dataclasses.replace(spec, nan_loss_versions=tuple(config.faults.nan_loss_epochs))
    people = config.algo.labelling(config)
    if people is not None and run_dir is not None:
        store = functools.partial(JudgementStore, Path(run_dir).resolve(), people.staleness)
        spec = dataclasses.replace(spec, judgements=store)
    scale = config.scaleout
    keys = (
        "resources.num_learners",
        "resources.learner_cpus",
        "resources.learner_gpus",
        "scaleout.placement_strategy",
    )
    return LearnerGroup(
        spec,
        resources.num_learners,
        resources.learner_cpus,
        resources.learner_gpus,
        config.run.torch_threads,
        scale.learner_backend,
        scale.placement_strategy,
        functools.partial(wait_for_placement_group, timeout_s=scale.placement_timeout_s, what="learners", keys=keys),
    )


def rollout_pool(config: TrainConfig) -> RolloutPool:
    """The run's rollout actors with the algorithm's sampler."""
    resources, scale = config.resources, config.scaleout
    spec = rollout_spec(config)
    options = PoolOptions(
        cpus=resources.rollout_cpus,
        gpus=resources.rollout_gpus,
        torch_threads=config.run.torch_threads,
        max_inflight=scale.max_inflight_per_actor,
        max_restarts=scale.rollout_max_restarts,
        max_task_retries=scale.rollout_max_task_retries,
        strategy=scale.placement_strategy,
        crash_after_batches=config.faults.rollout_crash_after_batches,
        placement_timeout_s=scale.placement_timeout_s,
    )
    return RolloutPool(spec, options, resources.num_rollout_actors)
