"""Scale-out figures on the toy model (CPU): sync vs async with slow rewards, 1 -> 2 rollout actors, time_sync_s share,
and the distributed run against the same work in one process (no Ray).

    python benchmarks/bench_scaleout.py [--epochs 4] [--cpus 2]

Each case is a fresh `Trainer` on one local Ray instance; the first epoch (warm-up) is left out of the
figures. Throughput = trained samples per second of wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from cluster.trainer import Trainer
from learner.ppo.learner import LearnerSpec, PPOLearner
from rewards_service.registry import build_scorer
from rlcm.config.prompts import batch_seed, epoch_prompts, load_prompts
from rlcm.config.schema import load_config
from rollout.trajectory import Trajectory
from rollout.worker import RolloutSpec, RolloutWorker

BASE = ["sampling.batches_per_epoch=2", "run.sample_grid_every=1000", "run.save_every=1000", "run.torch_threads=1"]


def measure(name: str, overrides: list[str], epochs: int) -> dict:
    config = load_config(None, [*BASE, f"run.epochs={epochs}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp))
        try:
            start = time.perf_counter()
            rows = trainer.run()
            wall = time.perf_counter() - start
        finally:
            trainer.shutdown()
    steady = rows[1:]
    steady_wall = (
        sum(r["time_epoch_s"] for r in steady) if config.scaleout.mode == "sync" else wall * len(steady) / len(rows)
    )
    samples = config.samples_per_epoch * len(steady)
    result = {
        "case": name,
        "samples_per_s": samples / steady_wall,
        "epoch_s": steady_wall / len(steady),
        "rollout_s": float(np.mean([r["time_rollout_s"] for r in steady])),
        "sync_share": float(np.mean([r["time_sync_s"] / r["time_epoch_s"] for r in steady])),
        "time_sync_ms": 1000 * float(np.mean([r["time_sync_s"] for r in steady])),
    }
    print(
        f"{name:42s} {result['samples_per_s']:6.2f} samples/s  epoch {result['epoch_s']:5.2f} s  "
        f"rollout {result['rollout_s']:5.2f} s  time_sync {result['time_sync_ms']:6.1f} ms "
        f"({100 * result['sync_share']:.2f}% of epoch)",
        flush=True,
    )
    return result


def measure_single_process(epochs: int) -> dict:
    """The same epochs (sample, score, PPO, adapter hand-over) in this process, one after another."""
    import torch

    config = load_config(None, [*BASE, f"run.epochs={epochs}"])
    torch.set_num_threads(config.run.torch_threads)
    worker = RolloutWorker(
        RolloutSpec(config.model.name, config.model.lora, config.sampling.num_steps, config.sampling.guidance_scale)
    )
    learner = PPOLearner(
        LearnerSpec(
            model=config.model.name,
            lora=config.model.lora,
            ppo=config.train,
            stat_buffer_size=config.stat_tracking.buffer_size,
            stat_min_count=config.stat_tracking.min_count,
        )
    )
    scorer, prompts = build_scorer(config.reward.name), load_prompts(config.prompts.source, config.prompts.limit)
    size, batches, times = config.sampling.batch_size, config.batches_per_update, []
    for epoch in range(epochs):
        start = time.perf_counter()
        worker.set_adapter(learner.adapter())
        picked = epoch_prompts(prompts, config.run.seed, epoch, size * batches)
        parts = [
            worker.sample(picked[b * size : (b + 1) * size], batch_seed(config.run.seed, epoch, b))
            for b in range(batches)
        ]
        trajectory = Trajectory.concat(parts)
        rewards = np.array(scorer.score(trajectory.images.permute(0, 2, 3, 1).numpy(), trajectory.prompts).rewards)
        learner.train(trajectory, learner.advantages(trajectory.prompts, rewards))
        times.append(time.perf_counter() - start)
    epoch_s = float(np.mean(times[1:]))
    print(
        f"{'one process, no Ray':42s} {config.samples_per_epoch / epoch_s:6.2f} samples/s  epoch {epoch_s:5.2f} s",
        flush=True,
    )
    return {"samples_per_s": config.samples_per_epoch / epoch_s, "epoch_s": epoch_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--reward-latency", type=float, default=None, help="seconds per reward call (default: ~ one rollout batch)"
    )
    args = parser.parse_args()
    ray.init(address="local", num_cpus=max(args.cpus, 4), include_dashboard=False, log_to_driver=False)
    base = measure("sync, 1 rollout actor", [], args.epochs)
    latency = (
        args.reward_latency if args.reward_latency is not None else base["rollout_s"] / 2
    )  # per batch: 2 batches per epoch
    slow = [f"faults.reward_latency_s={latency:.3f}"]
    sync_slow = measure(f"sync, reward latency {latency:.2f} s/batch", slow, args.epochs)
    async_slow = measure(
        f"async (k=1), reward latency {latency:.2f} s/batch", [*slow, "scaleout.mode=async"], args.epochs + 1
    )
    two = measure(
        "sync, 2 rollout actors (same samples/epoch)",
        ["resources.num_rollout_actors=2", "sampling.batches_per_epoch=1"],
        args.epochs,
    )
    single = measure_single_process(args.epochs)
    print(
        f"distributed (1 rollout actor + 1 learner) vs one process: epoch {base['epoch_s'] / single['epoch_s']:.2f}x "
        "the time"
    )
    print(f"async / sync with slow rewards: {async_slow['samples_per_s'] / sync_slow['samples_per_s']:.2f}x")
    print(
        f"2 / 1 rollout actors: rollout time {base['rollout_s']:.2f} s -> {two['rollout_s']:.2f} s, "
        f"throughput {two['samples_per_s'] / base['samples_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
