"""The training driver: RLCM Algorithm 1 on a rollout pool, a trajectory buffer and a learner group.

`sync` (on-policy), one epoch top to bottom:
  1. draw prompts for every rollout batch (a pure function of seed, epoch and batch);
  2. send batches to the least-loaded rollout actor, at most `max_inflight_per_actor` each;
  3. as each batch lands, send its images to the reward scorer while sampling goes on;
  4. join trajectories and rewards in the buffer; the learners compute advantages and run PPO;
  5. rank 0's new adapter goes to the object store once and every rollout actor loads it.
`async`: rollouts keep going with the newest adapter while the learner trains; an update takes the
oldest scored batches whose policy is at most `max_staleness` versions old (older ones are dropped);
PPO's old log-probs are the behaviour policy's recorded ones.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from cluster.buffer import Entry, TrajectoryBuffer, join_reward
from cluster.config import TrainConfig, dump_config
from cluster.control import start_controller
from cluster.grid import save_sample_grid
from cluster.prompts import batch_seed, epoch_prompts, load_prompts
from cluster.rollout_pool import Job, PoolOptions, RolloutPool
from learner.group import LearnerGroup
from learner.learner import LearnerSpec
from rewards_service.client import RewardClient, RewardClientConfig, build_reward_client
from rewards_service.scorers import ScoreResult
from rollout.worker import RolloutSpec

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CLIENTS: dict[str, RewardClient] = {}


@ray.remote
def score_images(client_config: RewardClientConfig, images: np.ndarray, prompts: list[str], latency_s: float = 0.0) -> ScoreResult:
    """Score one batch in a Ray worker through a reward client (built once per worker process).

    The client retries with backoff; a batch that still fails comes back with valid=False.
    """
    if latency_s:
        time.sleep(latency_s)
    key = client_config.model_dump_json()
    if key not in _CLIENTS:
        _CLIENTS[key] = build_reward_client(client_config)
    return _CLIENTS[key].score(images, prompts)


class OutputDir:
    """The run's folder: config.yaml, metrics.jsonl, samples/, checkpoints/."""

    def __init__(self, root: Path):
        self.root = root
        self.metrics = root / "metrics.jsonl"
        self.checkpoints = root / "checkpoints"
        self.samples = root / "samples"

    def check_free(self, resume: bool) -> None:
        """Refuse to overwrite an earlier run unless it is being resumed."""
        if self.metrics.is_file() and not resume:
            raise FileExistsError(f"{self.root} already holds a run; pass --resume to continue it or choose another --output-dir")

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
    """Owns the pool, the buffer and the learners; `run()` trains `config.run.epochs` updates into `output_dir`."""

    def __init__(self, config: TrainConfig, output_dir: Path, resume: bool = False):
        self.config = config
        self.out = OutputDir(output_dir)
        self.prompts = load_prompts(config.prompts.source, config.prompts.limit)
        self._prepare_output(resume)
        dtype, threads, resources, scale = DTYPES[config.model.dtype], config.run.torch_threads, config.resources, config.scaleout
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
        self.learners = LearnerGroup(
            learner_spec, resources.num_learners, resources.learner_cpus, resources.learner_gpus, threads, scale.learner_backend, scale.placement_strategy
        )
        options = PoolOptions(
            cpus=resources.rollout_cpus,
            gpus=resources.rollout_gpus,
            torch_threads=threads,
            max_inflight=scale.max_inflight_per_actor,
            max_restarts=scale.rollout_max_restarts,
            max_task_retries=scale.rollout_max_task_retries,
            strategy=scale.placement_strategy,
            crash_after_batches=config.faults.rollout_crash_after_batches,
        )
        self.pool = RolloutPool(rollout_spec, options, resources.num_rollout_actors)
        self.num_batches = config.batches_per_update
        self.buffer = TrajectoryBuffer(max(scale.buffer_batches or 2 * self.num_batches, self.num_batches))
        self.rewards_pending: dict = {}  # reward ref -> (entry, submit time)
        self.reward_latency: list[float] = []
        self.reward_client = config.reward.client_config()
        self.rescored_batches = 0
        self.controller = start_controller(output_dir, resources.num_rollout_actors)
        self.last_control = 0.0
        self.start_epoch, self.samples_seen = 0, 0
        if resume and (checkpoint := self.out.latest_checkpoint()):
            state = json.loads((checkpoint / "driver_state.json").read_text())
            self.learners.load(str(checkpoint))
            self.start_epoch, self.samples_seen = state["epoch"] + 1, state["samples_seen"]
            self.out.truncate_metrics(state["epoch"])
        self.version = ray.get(self.learners.rank0.version.remote())

    def _prepare_output(self, resume: bool) -> None:
        self.out.check_free(resume)
        self.out.root.mkdir(parents=True, exist_ok=True)
        (self.out.root / "config.yaml").write_text(dump_config(self.config))

    # ---- the pieces ---------------------------------------------------------
    def score_batch(self, images_ref, prompts: list[str]) -> ray.ObjectRef:
        """The one place rewards are requested: ObjectRef of a ScoreResult for one batch."""
        reward = self.config.reward
        return score_images.options(num_cpus=reward.num_cpus).remote(self.reward_client, images_ref, prompts, self.config.faults.reward_latency_s)

    def unify_reward_versions(self, entries: list[Entry]) -> None:
        """One PPO batch never mixes reward versions: after a hot swap, re-score the batches an older
        version scored (their images are still in the object store) until all carry the newest."""
        for _ in range(3):
            scored = [e for e in entries if e.valid.any()]
            if len({e.reward_version for e in scored}) <= 1:
                return
            newest = scored[-1].reward_version
            stale = [e for e in scored if e.reward_version != newest]
            results = ray.get([self.score_batch(e.images_ref, e.prompts) for e in stale], timeout=self.config.reward.timeout_s)
            for entry, result in zip(stale, results):
                join_reward(entry, result.rewards, result.valid, result.version)
            self.rescored_batches += len(stale)
        raise RuntimeError(f"reward versions kept changing while re-scoring: {sorted({e.reward_version for e in entries})}")

    def publish(self, broadcast: bool) -> float:
        """Put rank 0's adapter in the object store once; new batches carry it (sync: pushed to every actor now)."""
        start = time.perf_counter()
        adapter_ref = self.learners.adapter()
        ray.wait([adapter_ref], fetch_local=False)
        self.pool.set_adapter(self.version, adapter_ref)
        if broadcast:
            self.pool.broadcast()
        return time.perf_counter() - start

    def jobs(self, epoch: int) -> list[Job]:
        size = self.config.sampling.batch_size
        prompts = epoch_prompts(self.prompts, self.config.run.seed, epoch, self.num_batches * size)
        return [Job((epoch, b), prompts[b * size : (b + 1) * size], batch_seed(self.config.run.seed, epoch, b)) for b in range(self.num_batches)]

    def submit(self, job: Job) -> None:
        self.buffer.reserve()
        self.pool.submit(job)

    def poll(self, extra: list, timeout: float) -> None:
        """Dispatch, then wait for any batch, reward, probe or `extra` ref and file what landed."""
        self._control()
        self.pool.pump()
        refs = [*self.pool.wait_refs(), *self.rewards_pending, *extra]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for done in self.pool.collect(ready):
            entry = Entry(done.job.key, done.job.prompts, done.trajectory_ref, done.images_ref, done.info["policy_version"])
            entry.reward_ref = self.score_batch(done.images_ref, done.job.prompts)
            self.buffer.add(entry)
            self.rewards_pending[entry.reward_ref] = (entry, time.perf_counter())
        for ref in [r for r in ready if r in self.rewards_pending]:
            entry, submitted = self.rewards_pending.pop(ref)
            result: ScoreResult = ray.get(ref, timeout=self.config.reward.timeout_s)
            join_reward(entry, result.rewards, result.valid, result.version)
            self.reward_latency.append(time.perf_counter() - submitted)
        self.pool.pump()

    def _control(self) -> None:
        now = time.perf_counter()
        if now - self.last_control >= self.config.scaleout.control_poll_s:
            self.last_control = now
            self.pool.resize(ray.get(self.controller.rollout_actors.remote()))

    def start_update(self, entries: list[Entry]) -> list:
        self.unify_reward_versions(entries)
        rewards = np.concatenate([e.rewards for e in entries])
        valid = np.concatenate([e.valid for e in entries])
        return self.learners.train(rewards, valid, [e.trajectory_ref for e in entries])

    # ---- the loops ----------------------------------------------------------
    def run(self) -> list[dict]:
        """Train the remaining epochs; returns the metrics rows written this call."""
        self.publish(broadcast=True)
        loop = self._run_async if self.config.scaleout.mode == "async" else self._run_sync
        return loop()

    def _run_sync(self) -> list[dict]:
        rows = []
        for epoch in self._progress():
            epoch_start = time.perf_counter()
            for job in self.jobs(epoch):
                self.submit(job)
            rollout_done = None
            while len(self.buffer.ready()) < self.num_batches:
                self.poll([], timeout=1.0)
                if rollout_done is None and self.pool.pending == 0 and self.buffer.reserved == 0:
                    rollout_done = time.perf_counter()
            reward_done = time.perf_counter()
            rollout_done = rollout_done or reward_done
            entries = self.buffer.take([e.key for e in self.buffer.ready()], self.version)
            metrics = ray.get(self.start_update(entries))[0]
            train_done = time.perf_counter()
            self.version += 1
            time_sync = self.publish(broadcast=True)
            times = {"time_rollout_s": rollout_done - epoch_start, "time_reward_s": reward_done - rollout_done, "time_train_s": train_done - reward_done, "time_sync_s": time_sync}
            rows.append(self._finish(epoch, entries, metrics, times, self.pool.take_stats(), epoch_start))
        return rows

    def _run_async(self) -> list[dict]:
        rows, keys = [], itertools.chain.from_iterable(self.jobs(e) for e in itertools.count(self.start_epoch))
        progress = iter(self._progress())
        epoch, training, window_start = next(progress, None), None, time.perf_counter()
        queue_depth = 0
        while epoch is not None:
            while self.buffer.has_room():
                self.submit(next(keys))
            self.poll(training[0][:1] if training else [], timeout=1.0)
            if training and not ray.wait(training[0], num_returns=len(training[0]), timeout=0)[1]:
                refs, entries, started = training
                metrics = ray.get(refs)[0]
                train_done = time.perf_counter()
                self.version += 1
                time_sync = self.publish(broadcast=False)
                window = time.perf_counter() - window_start
                stats = self.pool.take_stats()
                times = {
                    "time_rollout_s": float(np.mean([s["busy_s"] for s in stats.values()])),
                    "time_reward_s": float(np.mean(self.reward_latency)) * self.num_batches / max(self.pool.size, 1) if self.reward_latency else 0.0,
                    "time_train_s": train_done - started,
                    "time_sync_s": time_sync,
                    "learner_idle_ratio": max(0.0, 1.0 - (train_done - started) / window),
                    "queue_depth": queue_depth,
                }
                self.reward_latency.clear()
                rows.append(self._finish(epoch, entries, metrics, times, stats, window_start))
                epoch, training, window_start = next(progress, None), None, time.perf_counter()
            if training is None and epoch is not None:
                self.buffer.drop_stale(self.version, self.config.scaleout.max_staleness)
                ready = self.buffer.ready()
                if len(ready) >= self.num_batches:
                    queue_depth = len(ready)
                    entries = self.buffer.take([e.key for e in ready[: self.num_batches]], self.version)
                    training = (self.start_update(entries), entries, time.perf_counter())
        return rows

    def _progress(self):
        total = self.config.run.epochs
        return tqdm(range(self.start_epoch, total), desc="rlcm train", unit="epoch", initial=self.start_epoch, total=total)

    def _finish(self, epoch: int, entries: list[Entry], metrics: dict, times: dict, stats: dict, epoch_start: float) -> dict:
        """Write the epoch's metrics row, sample grid and checkpoint."""
        config = self.config
        rewards = np.concatenate([e.rewards for e in entries])
        valid = np.concatenate([e.valid for e in entries])
        valid_rewards = rewards[valid]
        self.samples_seen += int(valid.sum())
        row = {
            "epoch": epoch,
            "reward_mean": float(valid_rewards.mean()) if len(valid_rewards) else float("nan"),
            "reward_std": float(valid_rewards.std()) if len(valid_rewards) else float("nan"),
            "samples_seen": self.samples_seen,
            "num_invalid": int((~valid).sum()),
            "policy_version": self.version,
            "reward_version": ",".join(sorted({e.reward_version for e in entries})),
            "mode": config.scaleout.mode,
            **times,
            **metrics,
            "behaviour_versions": sorted({e.policy_version for e in entries}),
            "staleness_hist": {str(k): v for k, v in sorted(self.buffer.staleness_hist.items())},
            "dropped_stale": self.buffer.dropped_stale,
            "rollout_actors": stats,
            "num_rollout_actors": self.pool.size,
            "rollout_idle_ratio": float(np.mean([s["idle_ratio"] for s in stats.values()])) if stats else 0.0,
            "rollout_failures": self.pool.failures,
            "rescored_batches": self.rescored_batches,
        }
        row["time_epoch_s"] = time.perf_counter() - epoch_start
        self.out.append_metrics(row)
        if epoch % config.run.sample_grid_every == 0 or epoch == config.run.epochs - 1:
            shown = entries[:2]
            images = np.concatenate(ray.get([e.images_ref for e in shown]))
            prompts = [p for e in shown for p in e.prompts]
            save_sample_grid(self.out.samples / f"epoch-{epoch:04d}.png", images, prompts, rewards[: len(prompts)].tolist())
        if (epoch + 1) % config.run.save_every == 0 or epoch == config.run.epochs - 1:
            self.save_checkpoint(epoch)
        return row

    def save_checkpoint(self, epoch: int) -> Path:
        directory = self.out.checkpoint(epoch)
        directory.mkdir(parents=True, exist_ok=True)
        self.learners.save(str(directory))
        (directory / "rlcm_model.json").write_text(json.dumps({"model": self.config.model.name, "model_seed": self.config.model.seed}))
        (directory / "driver_state.json").write_text(json.dumps({"epoch": epoch, "samples_seen": self.samples_seen, "policy_version": self.version}))
        return directory

    def shutdown(self) -> None:
        self.pool.shutdown()
        self.learners.shutdown()
        ray.kill(self.controller)

def train(config: TrainConfig, output_dir: Path, resume: bool = False) -> list[dict]:
    """Run training on the current Ray cluster (started locally if none)."""
    OutputDir(output_dir).check_free(resume)
    init_ray()
    trainer = Trainer(config, output_dir, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.shutdown()
