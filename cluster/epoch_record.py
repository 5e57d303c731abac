"""What a finished epoch leaves behind: its timings, its metrics row, its sample grid, the non-finite steps note."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from cluster.buffer import Entry, TrajectoryBuffer
from cluster.rollout_pool import RolloutPool
from learner.guards import SkipStreak
from rlcm.config.schema import TrainConfig
from rlcm.runs.grid import grid_title, save_sample_grid


def epoch_times(
    own_samples: bool,
    mode: str,
    reward_latency: list[float],
    stats: dict,
    window_start: float,
    rollout_done: float | None,
    train_start: float,
    train_done: float,
    time_sync: float,
    queue_depth: int,
) -> dict:
    """Where the epoch's time went; `reward_latency` (own samples: the monitoring batches' scoring) is emptied."""
    if own_samples:  # rollouts only monitor, beside the learners: their busy time and the reward latency
        times = {
            "time_rollout_s": float(np.mean([s["busy_s"] for s in stats.values()])) if stats else 0.0,
            "time_reward_s": float(np.mean(reward_latency)) if reward_latency else 0.0,
            "time_train_s": train_done - train_start,
            "time_sync_s": time_sync,
        }
        reward_latency.clear()
        return times
    rollout_done = rollout_done or train_start
    times = {
        "time_rollout_s": rollout_done - window_start,
        "time_reward_s": max(0.0, train_start - rollout_done),
        "time_train_s": train_done - train_start,
        "time_sync_s": time_sync,
    }
    if mode == "async":
        window = max(time.perf_counter() - window_start, 1e-9)
        times["learner_idle_ratio"] = max(0.0, 1.0 - times["time_train_s"] / window)
        times["queue_depth"] = queue_depth
    return times


def epoch_row(
    epoch: int,
    config: TrainConfig,
    rewards: dict,
    metrics: dict,
    times: dict,
    entries: list[Entry],
    stats: dict,
    *,
    samples_seen: int,
    policy_version: int,
    skipped: bool,
    buffer: TrajectoryBuffer,
    pool: RolloutPool,
    rescored_batches: int,
    reward_retries: int,
) -> dict:
    """The epoch's line of metrics.jsonl, less `time_epoch_s`."""
    return {
        "epoch": epoch,
        "algorithm": config.algorithm,
        **rewards,
        "samples_seen": samples_seen,
        "policy_version": policy_version,
        "skipped_update": skipped,
        "mode": config.scaleout.mode,
        **times,
        **metrics,
        "behaviour_versions": sorted({e.policy_version for e in entries}),
        "staleness_hist": {str(k): v for k, v in sorted(buffer.staleness_hist.items())},
        "dropped_stale": buffer.dropped_stale,
        "rollout_actors": stats,
        "num_rollout_actors": pool.size,
        "rollout_idle_ratio": float(np.mean([s["idle_ratio"] for s in stats.values()])) if stats else 0.0,
        "rollout_failures": pool.failures,
        "rescored_batches": rescored_batches,
        "resampled_batches": pool.requeued,
        "reward_retries": reward_retries,
    }


@dataclass(frozen=True)
class FlopModel:
    """What `rlcm plan` says one trained sample costs, the GPUs the run holds and their bf16 peak (per GPU)."""

    flops_per_sample: int
    gpus: float
    peak_flops: float


def perf_fields(row: dict, samples: int, num_learners: int, flop_model: FlopModel | None) -> dict:
    """Throughput of the epoch of `row`: trained samples and UNet images (learners' + rollout actors') per second;
    with a GPU flop model, achieved TFLOP/s per GPU (the plan's FLOPs per trained sample) and MFU against the bf16
    peak."""
    seconds = max(row["time_epoch_s"], 1e-9)
    learner_images = row.get("learner_unet_images", 0) * num_learners  # the row holds the ranks' mean
    rollout_images = sum(actor.get("unet_images", 0) for actor in row.get("rollout_actors", {}).values())
    out = {
        "perf_samples_per_s": samples / seconds,
        "perf_unet_images_per_s": (learner_images + rollout_images) / seconds,
    }
    if flop_model is not None:
        tflops = samples * flop_model.flops_per_sample / seconds / flop_model.gpus / 1e12
        out.update(perf_tflops_per_gpu=tflops, perf_mfu=tflops * 1e12 / flop_model.peak_flops)
    return out


def check_finite(nonfinite: SkipStreak, epoch: int, row: dict) -> None:
    """Say which optimizer steps were skipped for non-finite numbers; stop after too many fully skipped updates."""
    skipped, steps = int(row.get("nonfinite_steps") or 0), int(row.get("optimizer_steps") or 0)
    if skipped:
        print(
            f"rlcm: epoch {epoch}: {skipped} of {steps} optimizer steps skipped (non-finite loss or gradients; "
            "not applied)",
            file=sys.stderr,
            flush=True,
        )
    nonfinite.record(f"epoch {epoch}: all {steps} steps non-finite" if steps and skipped == steps else None)


def save_epoch_grid(path: Path, epoch: int, config: TrainConfig, entries: list[Entry], own_samples: bool) -> np.ndarray:
    """The first two batches' images with their prompts and rewards, as `path` (PNG); returns the grid."""
    shown = entries[:2]
    images = np.concatenate(ray.get([e.images_ref for e in shown]))
    prompts = [p for e in shown for p in e.prompts]
    rewards = np.concatenate([e.rewards for e in shown]).tolist()
    reward, what = (
        (config.reward.monitor or config.reward.name, "held-out monitor") if own_samples else (config.reward.name, "")
    )
    title = grid_title(epoch, config.run.epochs, reward, rewards, what)
    return save_sample_grid(path, images, prompts, rewards, title=title)
