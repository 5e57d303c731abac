"""The training driver (RLCM Algorithm 1, synchronous): sample with θ_v, score, PPO, broadcast θ_{v+1}.

One epoch, top to bottom:
  1. draw prompts for every rollout batch (a pure function of seed and epoch);
  2. send batches to the least-loaded rollout actor, at most `max_inflight` per actor;
  3. as each batch lands, send its images to the reward scorer while sampling goes on;
  4. join trajectories and rewards; the learner computes advantages and runs PPO;
  5. the learner's new adapter goes to the object store once and every rollout actor loads it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from cluster.config import TrainConfig, dump_config
from cluster.grid import save_sample_grid
from cluster.prompts import batch_seed, epoch_prompts, load_prompts
from learner.actor import Learner
from learner.learner import LearnerSpec
from rewards_service.scorers import ScoreResult, build_scorer
from rollout.actor import RolloutActor
from rollout.worker import RolloutSpec

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SCORERS: dict[str, object] = {}


@ray.remote
def score_images(reward_name: str, images: np.ndarray, prompts: list[str]) -> ScoreResult:
    """Score one batch in a Ray worker; the scorer is built once per worker process."""
    if reward_name not in _SCORERS:
        _SCORERS[reward_name] = build_scorer(reward_name)
    return _SCORERS[reward_name].score(images, prompts)


@dataclass
class EpochResult:
    rewards: np.ndarray
    valid: np.ndarray
    reward_version: str
    trajectory_refs: list
    images: np.ndarray
    prompts: list[str]
    times: dict[str, float] = field(default_factory=dict)


class OutputDir:
    """The run's folder: config.yaml, metrics.jsonl, samples/, checkpoints/."""

    def __init__(self, root: Path):
        self.root = root
        self.metrics = root / "metrics.jsonl"
        self.checkpoints = root / "checkpoints"
        self.samples = root / "samples"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("epoch-*") if (p / "driver_state.json").is_file())
        return done[-1] if done else None

    def append_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        if self.metrics.is_file():
            rows = [line for line in self.metrics.read_text().splitlines() if line and json.loads(line)["epoch"] <= last_epoch]
            self.metrics.write_text("".join(r + "\n" for r in rows))


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`), else start Ray locally."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


class Trainer:
    """Owns the actors and the loop; `run()` trains `config.run.epochs` epochs into `output_dir`."""

    max_inflight = 2

    def __init__(self, config: TrainConfig, output_dir: Path, resume: bool = False):
        self.config = config
        self.out = OutputDir(output_dir)
        self.prompts = load_prompts(config.prompts.source, config.prompts.limit)
        self._prepare_output(resume)
        dtype = DTYPES[config.model.dtype]
        threads = config.run.torch_threads
        resources = config.resources
        rollout_spec = RolloutSpec(
            model=config.model.name,
            lora=config.model.lora,
            num_steps=config.sampling.num_steps,
            guidance_scale=config.sampling.guidance_scale,
            height=config.sampling.height,
            width=config.sampling.width,
            original_inference_steps=config.sampling.original_inference_steps,
            model_seed=config.model.seed,
            dtype=dtype,
        )
        learner_spec = LearnerSpec(
            model=config.model.name,
            lora=config.model.lora,
            ppo=config.train,
            stat_buffer_size=config.stat_tracking.buffer_size,
            stat_min_count=config.stat_tracking.min_count,
            seed=config.run.seed,
            model_seed=config.model.seed,
            dtype=dtype,
        )
        self.learner = Learner.options(num_cpus=resources.learner_cpus, num_gpus=resources.learner_gpus).remote(learner_spec, threads)
        self.rollouts = [
            RolloutActor.options(num_cpus=resources.rollout_cpus, num_gpus=resources.rollout_gpus).remote(rollout_spec, threads)
            for _ in range(resources.num_rollout_actors)
        ]
        self.start_epoch, self.samples_seen = 0, 0
        if resume and (checkpoint := self.out.latest_checkpoint()):
            state = json.loads((checkpoint / "driver_state.json").read_text())
            ray.get(self.learner.load.remote(str(checkpoint)))
            self.start_epoch, self.samples_seen = state["epoch"] + 1, state["samples_seen"]
            self.out.truncate_metrics(state["epoch"])

    def _prepare_output(self, resume: bool) -> None:
        if self.out.metrics.is_file() and not resume:
            raise FileExistsError(f"{self.out.root} already holds a run; pass --resume to continue it or choose another --output-dir")
        self.out.root.mkdir(parents=True, exist_ok=True)
        (self.out.root / "config.yaml").write_text(dump_config(self.config))

    def broadcast(self) -> tuple[int, float]:
        """Put the learner's adapter in the object store once; every rollout actor loads it."""
        start = time.perf_counter()
        adapter_ref = self.learner.adapter.remote()
        versions = ray.get([actor.set_adapter.remote(adapter_ref) for actor in self.rollouts])
        return versions[0], time.perf_counter() - start

    def collect(self, epoch: int) -> EpochResult:
        """Sample every batch of the epoch across the rollout actors and score each as it lands."""
        sampling = self.config.sampling
        num_batches = sampling.batches_per_epoch * len(self.rollouts)
        prompts = epoch_prompts(self.prompts, self.config.run.seed, epoch, num_batches * sampling.batch_size)
        batches = [prompts[i * sampling.batch_size : (i + 1) * sampling.batch_size] for i in range(num_batches)]
        start = time.perf_counter()
        queue = list(range(num_batches))
        inflight: dict = {}
        load = {i: 0 for i in range(len(self.rollouts))}
        trajectory_refs: list = [None] * num_batches
        reward_refs: list = [None] * num_batches
        image_refs: list = [None] * num_batches
        while queue or inflight:
            while queue and min(load.values()) < self.max_inflight:
                actor_index = min(load, key=load.get)
                b = queue.pop(0)
                trajectory_ref, images_ref = self.rollouts[actor_index].sample.remote(batches[b], batch_seed(self.config.run.seed, epoch, b))
                trajectory_refs[b], image_refs[b] = trajectory_ref, images_ref
                inflight[images_ref] = (b, actor_index)
                load[actor_index] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            b, actor_index = inflight.pop(ready[0])
            load[actor_index] -= 1
            reward_refs[b] = score_images.options(num_cpus=self.config.reward.num_cpus).remote(self.config.reward.name, image_refs[b], batches[b])
        rollout_done = time.perf_counter()
        results: list[ScoreResult] = ray.get(reward_refs, timeout=self.config.reward.timeout_s)
        reward_done = time.perf_counter()
        rewards = np.array([r for result in results for r in result.rewards], dtype=np.float64)
        valid = np.array([v for result in results for v in getattr(result, "valid", [True] * len(result.rewards))], dtype=bool)
        valid &= np.isfinite(rewards)
        return EpochResult(
            rewards=rewards,
            valid=valid,
            reward_version=",".join(sorted({r.version for r in results})),
            trajectory_refs=trajectory_refs,
            images=np.concatenate(ray.get(image_refs[:2])),
            prompts=[p for batch in batches[:2] for p in batch],
            times={"time_rollout_s": rollout_done - start, "time_reward_s": reward_done - rollout_done},
        )

    def run(self) -> list[dict]:
        """Train the remaining epochs; returns the metrics rows written this call."""
        config = self.config
        rows = []
        version, time_sync = self.broadcast()
        progress = tqdm(range(self.start_epoch, config.run.epochs), desc="rlcm train", unit="epoch", initial=self.start_epoch, total=config.run.epochs)
        for epoch in progress:
            epoch_start = time.perf_counter()
            result = self.collect(epoch)
            train_start = time.perf_counter()
            rewards = np.where(result.valid, result.rewards, 0.0)
            metrics = ray.get(self.learner.train.remote(rewards, result.valid, *result.trajectory_refs))
            time_train = time.perf_counter() - train_start
            version, time_sync = self.broadcast()
            valid_rewards = result.rewards[result.valid]
            self.samples_seen += int(result.valid.sum())
            row = {
                "epoch": epoch,
                "reward_mean": float(valid_rewards.mean()) if len(valid_rewards) else float("nan"),
                "reward_std": float(valid_rewards.std()) if len(valid_rewards) else float("nan"),
                "samples_seen": self.samples_seen,
                "num_invalid": int((~result.valid).sum()),
                "policy_version": version,
                "reward_version": result.reward_version,
                **result.times,
                "time_train_s": time_train,
                "time_sync_s": time_sync,
                **{k: v for k, v in metrics.items()},
            }
            row["time_epoch_s"] = time.perf_counter() - epoch_start
            self.out.append_metrics(row)
            rows.append(row)
            progress.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['approx_kl']:.2e}")
            if epoch % config.run.sample_grid_every == 0 or epoch == config.run.epochs - 1:
                sample_rewards = result.rewards[: len(result.prompts)].tolist()
                save_sample_grid(self.out.samples / f"epoch-{epoch:04d}.png", result.images, result.prompts, sample_rewards)
            if (epoch + 1) % config.run.save_every == 0 or epoch == config.run.epochs - 1:
                self.save_checkpoint(epoch)
        return rows

    def save_checkpoint(self, epoch: int) -> Path:
        directory = self.out.checkpoint(epoch)
        directory.mkdir(parents=True, exist_ok=True)
        ray.get(self.learner.save.remote(str(directory)))
        (directory / "rlcm_model.json").write_text(json.dumps({"model": self.config.model.name, "model_seed": self.config.model.seed}))
        (directory / "driver_state.json").write_text(json.dumps({"epoch": epoch, "samples_seen": self.samples_seen}))
        return directory

    def shutdown(self) -> None:
        for actor in [self.learner, *self.rollouts]:
            ray.kill(actor)


def train(config: TrainConfig, output_dir: Path, resume: bool = False) -> list[dict]:
    """Run training on the current Ray cluster (started locally if none)."""
    init_ray()
    trainer = Trainer(config, output_dir, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.shutdown()
